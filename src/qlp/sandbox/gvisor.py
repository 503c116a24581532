"""The gVisor backend: each command runs in a fresh gVisor sandbox (`runsc run` of an OCI
bundle with `--network=none`), so the code talks to gVisor's user-space kernel, not the
host's.

The bundle mirrors the bubblewrap layout: an empty read-only root with the host's /usr and the
runtime environment bound read-only, /workspace read-write, a private tmpfs /tmp; no
capabilities, no-new-privileges, rlimits, and QLP's seccomp deny-list applied inside the
sandbox (`--oci-seccomp`). Memory, process and CPU limits come from a cgroup QLP creates and
puts the whole runsc process tree in (runsc is told `--ignore-cgroups`), so the host kernel
enforces them on gVisor itself. The plain `runsc do` mode is not used: it shows the sandbox
the host's whole root filesystem.

runsc needs root; a session is one workspace, and nothing survives a command.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import subprocess
import tempfile
import weakref
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qlp.errors import SandboxError
from qlp.sandbox import seccomp
from qlp.sandbox.base import (
    WORKSPACE,
    ExecResult,
    KilledReason,
    Limits,
    prepare_command,
    tmpfs_sizes,
)
from qlp.sandbox.cgroups import CgroupManager
from qlp.sandbox.process import run_process
from qlp.sandbox.reaper import Reaper
from qlp.sandbox.rlimits import classify, rlimit_values
from qlp.sandbox.runtime import check_runtime, runtime_path
from qlp.sandbox.workspace import WorkspaceLease, check_workspace, sandbox_identity

INSTALL_HINT = "install gVisor (Debian: apt-get install runsc) and run QLP as root"
LAUNCHER_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
ALTERNATIVES = "/etc/alternatives"
# Put this shell (and so everything it execs and forks) in each cgroup.procs given before
# "--", then exec the rest: the runsc tree starts inside its cgroup, with no race.
CGROUP_EXEC = 'while [ "$1" != -- ]; do echo $$ > "$1" || exit 125; shift; done; shift; exec "$@"'


@dataclass
class GvisorConfig:
    runtime: Path
    default_limits: Limits = field(default_factory=Limits)
    uid: int = 65534
    gid: int = 65534
    runsc: str = "runsc"
    platform: str | None = None


def delete_container(runsc_args: list[str], container_id: str) -> None:
    """`runsc delete --force`: runsc's record of a container (and what is left of it) goes.
    Used by the backend after each command and by the reaper after a crash."""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        subprocess.run(  # noqa: S603 - runsc's argv as QLP built it
            [*runsc_args, "delete", "--force", container_id],
            env=LAUNCHER_ENV,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=30,
            check=False,
        )


def _remove_dirs(*paths: Path) -> None:
    for path in paths:
        shutil.rmtree(path, ignore_errors=True)


class GvisorSandbox:
    name = "gvisor"

    def __init__(self, config: GvisorConfig) -> None:
        self.config = config
        self.default_limits = config.default_limits
        self._checked = False
        self._state: Path | None = None
        self._rootfs: Path | None = None

    def check(self) -> None:
        if self._checked:
            return
        runsc = shutil.which(self.config.runsc)
        if runsc is None:
            raise SandboxError(f"gvisor sandbox unavailable: `runsc` not found; {INSTALL_HINT}")
        if os.geteuid() != 0:
            raise SandboxError(f"gvisor sandbox unavailable: runsc needs root; {INSTALL_HINT}")
        self._runsc = runsc
        self.identity = sandbox_identity(self.config.uid, self.config.gid)
        check_runtime(self.config.runtime, need_under_usr=True, other_uid=False)
        self._cgroups, self._cgroup_note = CgroupManager.detect()
        if self._cgroups is None:
            raise SandboxError(
                f"gvisor sandbox unavailable: it needs a writable cgroup hierarchy for its "
                f"limits ({self._cgroup_note})"
            )
        self._state = Path(tempfile.mkdtemp(prefix="qlp-runsc-state-"))
        self._rootfs = self._make_rootfs()
        # Removed when the sandbox object goes away or the process exits, whichever is first.
        self._cleanup = weakref.finalize(self, _remove_dirs, self._state, self._rootfs)
        self._checked = True

    def _make_rootfs(self) -> Path:
        root = Path(tempfile.mkdtemp(prefix="qlp-runsc-rootfs-"))
        root.chmod(0o755)
        for name in ("usr", "workspace", "tmp", "proc", "dev", "etc", "etc/alternatives"):
            (root / name).mkdir()
        (root / str(self.config.runtime).lstrip("/")).mkdir(parents=True, exist_ok=True)
        for name in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
            host = Path("/") / name
            if host.is_symlink():
                (root / name).symlink_to(os.readlink(host))
        ident = self.identity
        (root / "etc" / "passwd").write_text(
            f"sandbox:x:{ident.uid}:{ident.gid}:sandbox:/tmp:/usr/sbin/nologin\n"
        )
        (root / "etc" / "group").write_text(f"sandbox:x:{ident.gid}:\n")
        return root

    def _runsc_args(self, *, network: bool) -> list[str]:
        assert self._state is not None
        args = [
            self._runsc,
            f"--root={self._state}",
            f"--network={'host' if network else 'none'}",
            "--ignore-cgroups",
            "--oci-seccomp",
        ]
        if self.config.platform:
            args.append(f"--platform={self.config.platform}")
        return args

    def spec(
        self,
        workspace: Path,
        argv: Sequence[str],
        env: Mapping[str, str],
        cwd: str,
        lim: Limits,
        *,
        network: bool,
    ) -> dict[str, Any]:
        assert self._rootfs is not None
        runtime = str(self.config.runtime)
        tmp_bytes, shm_bytes = tmpfs_sizes(lim)
        ro = ["rbind", "ro", "nosuid", "nodev"]
        namespaces = [{"type": t} for t in ("pid", "ipc", "uts", "mount")]
        # Debian's alternatives (awk, which, cc, nodejs...) are links through here.
        alternatives = (
            [{"destination": ALTERNATIVES, "type": "bind", "source": ALTERNATIVES, "options": ro}]
            if os.path.isdir(ALTERNATIVES)
            else []
        )
        if not network:
            namespaces.append({"type": "network"})
        return {
            "ociVersion": "1.0.0",
            "process": {
                "user": {"uid": self.identity.uid, "gid": self.identity.gid},
                "args": list(argv),
                "env": [f"{k}={v}" for k, v in env.items()],
                "cwd": cwd,
                "noNewPrivileges": True,
                "capabilities": {
                    k: [] for k in ("bounding", "effective", "inheritable", "permitted", "ambient")
                },
                "rlimits": [
                    {"type": f"RLIMIT_{name.upper()}", "soft": soft, "hard": hard}
                    for name, (soft, hard) in rlimit_values(lim, cgroup=True).items()
                ],
            },
            "root": {"path": str(self._rootfs), "readonly": True},
            "hostname": "qlp-sandbox",
            "mounts": [
                {"destination": "/usr", "type": "bind", "source": "/usr", "options": ro},
                {
                    "destination": WORKSPACE,
                    "type": "bind",
                    "source": str(workspace),
                    "options": ["rbind", "rw", "nosuid", "nodev"],
                },
                {
                    "destination": "/tmp",  # noqa: S108 - inside the sandbox
                    "type": "tmpfs",
                    "source": "tmpfs",
                    "options": ["nosuid", "nodev", f"size={tmp_bytes}"],
                },
                {
                    "destination": "/dev/shm",  # noqa: S108 - inside the sandbox
                    "type": "tmpfs",
                    "source": "tmpfs",
                    "options": ["nosuid", "nodev", "noexec", f"size={shm_bytes}"],
                },
                {"destination": "/proc", "type": "proc", "source": "proc"},
                *alternatives,
                # After /tmp: a runtime that lives under /tmp must not be hidden by it.
                {"destination": runtime, "type": "bind", "source": runtime, "options": ro},
            ],
            "linux": {
                "namespaces": namespaces,
                "seccomp": seccomp.oci_profile(clone3=True),
            },
        }

    def _forget(self, container_id: str) -> None:
        delete_container(self._runsc_args(network=False), container_id)

    @asynccontextmanager
    async def session(
        self, workspace: Path, *, network: bool = False, language: str = "python"
    ) -> AsyncIterator[GvisorSession]:
        await asyncio.to_thread(self.check)
        path = check_workspace(workspace)
        lease = WorkspaceLease(path, self.identity)
        await asyncio.to_thread(lease.acquire)
        sess = GvisorSession(self, path, network=network)
        try:
            yield sess
        finally:
            sess.closed = True
            await asyncio.to_thread(lease.release)

    def close(self) -> None:
        if self._checked:
            self._cleanup()
            self._checked = False


class GvisorSession:
    def __init__(self, sandbox: GvisorSandbox, workspace: Path, *, network: bool) -> None:
        self.sandbox = sandbox
        self._workspace = workspace
        self.network = network
        self.closed = False

    @property
    def workspace(self) -> Path:
        return self._workspace

    async def run(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        limits: Limits | None = None,
        cwd: str = WORKSPACE,
        stdin: bytes | None = None,
    ) -> ExecResult:
        sb = self.sandbox
        command = prepare_command(
            closed=self.closed,
            argv=argv,
            env=env,
            limits=limits,
            default_limits=sb.default_limits,
            path=runtime_path(sb.config.runtime),
            cwd=cwd,
        )
        args, lim, full_env = command.argv, command.limits, command.env
        container_id = f"qlp-{secrets.token_hex(8)}"
        bundle = Path(tempfile.mkdtemp(prefix="qlp-runsc-bundle-"))
        assert sb._cgroups is not None
        group = await asyncio.to_thread(sb._cgroups.create, "gvisor")
        try:
            spec = sb.spec(self._workspace, args, full_env, command.cwd, lim, network=self.network)
            (bundle / "config.json").write_text(json.dumps(spec))
            # gVisor's own processes (sentry, gofer) count against pids.max: leave them room.
            group.set_limits(lim.memory_bytes, lim.pids + 64, lim.cpus)
            procs = [str(d / "cgroup.procs") for d in group.paths()]
            cmd = ["/bin/sh", "-c", CGROUP_EXEC, "sh", *procs, "--"]
            cmd += [*sb._runsc_args(network=self.network), "run", f"--bundle={bundle}"]
            cmd.append(container_id)

            def monitor() -> KilledReason | None:
                stats = group.stats()
                if stats.oom_kills:
                    return KilledReason.MEMORY
                if stats.pids_refused:
                    return KilledReason.PIDS
                # gVisor does not enforce RLIMIT_CPU itself; the host cgroup's count does.
                if stats.cpu_s is not None and stats.cpu_s > lim.cpu_s + 1:
                    return KilledReason.CPU
                return None

            # If QLP dies or stalls, the reaper ends the sandbox (its cgroup holds every
            # process of it, sentry and gofer included) and deletes runsc's record of it.
            token = Reaper.get().watch(
                timeout_s=lim.timeout_s,
                cgroup=group.paths(),
                runsc=(sb._runsc_args(network=self.network), container_id),
            )
            try:
                raw = await run_process(
                    cmd,
                    env=LAUNCHER_ENV,
                    timeout_s=lim.timeout_s,
                    output_cap=lim.output_bytes,
                    stdin=stdin,
                    monitor=monitor,
                    kill=group.kill_all,
                )
                stats = group.stats()
            finally:
                Reaper.get().forget(token)
        finally:
            await asyncio.to_thread(group.remove)
            await asyncio.to_thread(sb._forget, container_id)
            shutil.rmtree(bundle, ignore_errors=True)
        reason, sig = classify(
            raw.exit_code,
            killed=raw.killed_reason,
            oom_kills=stats.oom_kills,
            pids_refused=stats.pids_refused,
            cpu_s=stats.cpu_s,
            limits=lim,
        )
        return ExecResult(
            argv=args,
            exit_code=raw.exit_code,
            stdout=raw.stdout.text(),
            stderr=raw.stderr.text(),
            wall_s=raw.wall_s,
            backend="gvisor",
            killed_reason=reason,
            signal=sig,
            cpu_s=stats.cpu_s,
            peak_memory_bytes=stats.peak_memory_bytes,
            stdout_truncated=raw.stdout.truncated,
            stderr_truncated=raw.stderr.truncated,
            notes=("cpu and memory figures include gVisor's own sentry and gofer",),
        )
