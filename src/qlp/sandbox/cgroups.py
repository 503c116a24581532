"""Per-command control groups (v1 and v2) for memory, process-count and CPU limits.

Where the cgroup filesystem is writable we create one cgroup per command *below the cgroup
QLP itself runs in* (so whatever limits and accounting the host put on QLP still apply), set
its limits, read back what happened (OOM kills, refused forks, peak memory, CPU time) and kill
everything left in it. Where it is not writable the caller falls back to rlimits.

cgroup v2 needs the memory, pids and cpu controllers enabled for QLP's own cgroup's
children; under systemd that is `Delegate=yes` on the unit (see docs/SANDBOX.md).
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from qlp.sandbox.owners import pid_alive

V1_CONTROLLERS = ("memory", "pids", "cpu", "cpuacct")
V2_CONTROLLERS = ("memory", "pids", "cpu")
CPU_PERIOD_US = 100_000
# qlp-sbx-<label>-<owner pid>-<random>
OWNED = re.compile(r"^qlp-sbx-[a-z]+-(\d+)-[0-9a-f]{8}$")


@dataclass(frozen=True)
class CgroupStats:
    oom_kills: int = 0
    pids_refused: int = 0
    peak_memory_bytes: int | None = None
    cpu_s: float | None = None


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def _keyed(text: str, key: str) -> int:
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == key and parts[1].isdigit():
            return int(parts[1])
    return 0


def _int(text: str) -> int | None:
    text = text.strip()
    return int(text) if text.isdigit() else None


def _write(path: Path, value: str) -> None:
    with open(path, "w") as fh:
        fh.write(value)


class Cgroup:
    """One command's cgroup: a directory per v1 controller, or one v2 directory."""

    def __init__(self, version: int, dirs: dict[str, Path]) -> None:
        self.version = version
        self.dirs = dirs  # controller -> directory ("unified" for v2)

    def _dir(self, controller: str) -> Path | None:
        return self.dirs.get("unified" if self.version == 2 else controller)

    def set_limits(self, memory_bytes: int, pids: int, cpus: float) -> None:
        quota = max(1000, int(cpus * CPU_PERIOD_US))
        if self.version == 2:
            d = self.dirs["unified"]
            _write(d / "memory.max", str(memory_bytes))
            if (d / "memory.swap.max").exists():
                _write(d / "memory.swap.max", "0")
            _write(d / "pids.max", str(pids))
            _write(d / "cpu.max", f"{quota} {CPU_PERIOD_US}")
            return
        mem = self.dirs["memory"]
        _write(mem / "memory.limit_in_bytes", str(memory_bytes))
        if (mem / "memory.memsw.limit_in_bytes").exists():
            _write(mem / "memory.memsw.limit_in_bytes", str(memory_bytes))
        _write(self.dirs["pids"] / "pids.max", str(pids))
        cpu = self.dirs["cpu"]
        _write(cpu / "cpu.cfs_period_us", str(CPU_PERIOD_US))
        _write(cpu / "cpu.cfs_quota_us", str(quota))

    def add(self, pid: int) -> None:
        for d in self.paths():
            _write(d / "cgroup.procs", str(pid))

    def stats(self) -> CgroupStats:
        if self.version == 2:
            d = self.dirs["unified"]
            usage = _keyed(_read(d / "cpu.stat"), "usage_usec")
            return CgroupStats(
                oom_kills=_keyed(_read(d / "memory.events"), "oom_kill"),
                pids_refused=_keyed(_read(d / "pids.events"), "max"),
                peak_memory_bytes=_int(_read(d / "memory.peak")),
                cpu_s=usage / 1e6,
            )
        mem = self.dirs["memory"]
        oom = _keyed(_read(mem / "memory.oom_control"), "oom_kill")
        acct = self.dirs.get("cpuacct")
        usage_ns = _int(_read(acct / "cpuacct.usage")) if acct else None
        return CgroupStats(
            oom_kills=oom,
            pids_refused=_keyed(_read(self.dirs["pids"] / "pids.events"), "max"),
            peak_memory_bytes=_int(_read(mem / "memory.max_usage_in_bytes")),
            cpu_s=usage_ns / 1e9 if usage_ns is not None else None,
        )

    def kill_all(self) -> None:
        """SIGKILL every process in the cgroup until it is empty (bounded: pids.max holds)."""
        if self.version == 2 and (self.dirs["unified"] / "cgroup.kill").exists():
            with contextlib.suppress(OSError):
                _write(self.dirs["unified"] / "cgroup.kill", "1")
        kill_members(self.paths())

    def remove(self) -> None:
        self.kill_all()
        remove_dirs(self.paths())

    def paths(self) -> list[Path]:
        """Its directories, once each (v1 may co-mount cpu and cpuacct)."""
        return list(dict.fromkeys(self.dirs.values()))


def kill_members(dirs: list[Path]) -> None:
    """SIGKILL every process in these cgroup directories until none is left (bounded:
    pids.max holds, and so do the rounds)."""
    for _ in range(200):
        pids: set[int] = set()
        for d in dirs:
            pids.update(int(p) for p in _read(d / "cgroup.procs").split() if p.isdigit())
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.005)


def remove_dirs(dirs: list[Path]) -> None:
    """rmdir each, waiting out EBUSY while the last processes are reaped."""
    for d in dirs:
        for _ in range(100):
            try:
                d.rmdir()
                break
            except FileNotFoundError:
                break
            except OSError as exc:
                if exc.errno != errno.EBUSY:
                    break
                time.sleep(0.01)


class CgroupManager:
    """Finds where QLP may create cgroups. `detect()` returns None (with a reason) if nowhere."""

    def __init__(self, version: int, bases: dict[str, Path]) -> None:
        self.version = version
        self.bases = bases

    @classmethod
    def detect(
        cls, mounts: Path = Path("/proc/self/mounts"), own: Path = Path("/proc/self/cgroup")
    ) -> tuple[CgroupManager | None, str]:
        own_paths: dict[str, str] = {}
        for line in _read(own).splitlines():
            parts = line.split(":", 2)
            if len(parts) == 3:
                for ctrl in parts[1].split(",") if parts[1] else ["unified"]:
                    own_paths[ctrl] = parts[2]
        v1: dict[str, Path] = {}
        v2: Path | None = None
        for line in _read(mounts).splitlines():
            fields = line.split()
            if len(fields) < 4:
                continue
            if fields[2] == "cgroup2" and v2 is None:
                v2 = Path(fields[1])
            elif fields[2] == "cgroup":
                for opt in fields[3].split(","):
                    if opt in V1_CONTROLLERS and opt in own_paths:
                        v1[opt] = Path(fields[1]) / own_paths[opt].lstrip("/")
        if all(c in v1 for c in ("memory", "pids", "cpu")):
            mgr = cls(1, v1)
            mgr.sweep()
            problem = mgr._probe()
            return (mgr, "cgroup v1") if problem is None else (None, problem)
        if v2 is not None and "unified" in own_paths:
            base = v2 / own_paths["unified"].lstrip("/")
            enabled = set(_read(base / "cgroup.subtree_control").split())
            missing = [c for c in V2_CONTROLLERS if c not in enabled]
            if missing:
                try:
                    _write(base / "cgroup.subtree_control", " ".join(f"+{c}" for c in missing))
                except OSError as exc:
                    return None, (
                        f"cgroup v2 controllers {', '.join(missing)} are not delegated to "
                        f"{base} ({exc.strerror})"
                    )
            mgr = cls(2, {"unified": base})
            mgr.sweep()
            problem = mgr._probe()
            return (mgr, "cgroup v2") if problem is None else (None, problem)
        return None, "no cgroup hierarchy with memory, pids and cpu controllers is mounted"

    def sweep(self) -> list[str]:
        """Kill and remove the cgroups of QLP processes that are gone (a crash, SIGKILL, with
        their reaper killed too). Another QLP's cgroups, alive, are left alone."""
        removed: list[str] = []
        for base in dict.fromkeys(self.bases.values()):
            try:
                names = [p.name for p in base.iterdir() if OWNED.match(p.name)]
            except OSError:
                continue
            for name in names:
                match = OWNED.match(name)
                assert match is not None
                if pid_alive(int(match.group(1))):
                    continue
                dirs = {c: b / name for c, b in self.bases.items() if (b / name).is_dir()}
                Cgroup(self.version, dirs).remove()
                removed.append(name)
        return removed

    def _probe(self) -> str | None:
        try:
            group = self.create("probe")
        except OSError as exc:
            return f"cannot create cgroups ({exc.strerror or exc})"
        group.remove()
        return None

    def create(self, label: str) -> Cgroup:
        # The owner's pid in the name: what a dead QLP left is recognised (`sweep`), and a
        # QLP (or a test) can tell its own cgroups from another's on the same machine.
        name = f"qlp-sbx-{label}-{os.getpid()}-{secrets.token_hex(4)}"
        made: dict[str, Path] = {}
        try:
            for ctrl, base in self.bases.items():
                d = base / name
                if d not in made.values():  # v1 may co-mount cpu and cpuacct
                    d.mkdir()
                made[ctrl] = d
        except OSError:
            Cgroup(self.version, made).remove()
            raise
        return Cgroup(self.version, made)
