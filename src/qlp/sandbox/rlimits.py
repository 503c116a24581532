"""Limits as rlimits, and how to name the reason a command died.

The same numbers are expressed three ways: `prlimit` arguments (bubblewrap, applied inside
the sandbox's own user namespace, so RLIMIT_NPROC counts only that sandbox's processes),
Docker ulimits, and OCI `process.rlimits` (gVisor).
"""

from __future__ import annotations

import signal

from qlp.sandbox.base import KilledReason, Limits

PRLIMIT = "/usr/bin/prlimit"


def rlimit_values(limits: Limits, *, cgroup: bool) -> dict[str, tuple[int, int]]:
    """Soft and hard values by rlimit name. CPU gets one second of grace between SIGXCPU and
    SIGKILL. With a cgroup, pids.max is the process limit (it can be observed, so the result
    says "pids") and RLIMIT_NPROC is only a looser backstop; without one, RLIMIT_AS stands in
    for the memory limit (cruder: it also counts reservations never touched)."""
    nproc = limits.pids * 2 + 16 if cgroup else limits.pids
    values = {
        "cpu": (limits.cpu_s, limits.cpu_s + 1),
        "fsize": (limits.file_size_bytes, limits.file_size_bytes),
        "nofile": (limits.open_files, limits.open_files),
        "nproc": (nproc, nproc),
        "core": (0, 0),
    }
    if not cgroup:
        values["as"] = (limits.memory_bytes, limits.memory_bytes)
    return values


def prlimit_argv(limits: Limits, *, cgroup: bool) -> list[str]:
    args = [PRLIMIT]
    for name, (soft, hard) in rlimit_values(limits, cgroup=cgroup).items():
        args.append(f"--{name}={soft}:{hard}")
    args.append("--")
    return args


def classify(
    exit_code: int,
    *,
    killed: KilledReason | None = None,
    oom_kills: int = 0,
    pids_refused: int = 0,
    cpu_s: float | None = None,
    limits: Limits,
) -> tuple[KilledReason | None, int | None]:
    """(killed_reason, signal) for a finished command. Our own kill wins; then evidence from
    the cgroup; then the signal that ended it (128+N)."""
    sig = exit_code - 128 if 128 < exit_code < 128 + 65 else None
    if killed is not None:
        return killed, sig
    if oom_kills:
        return KilledReason.MEMORY, sig
    if pids_refused and exit_code != 0:
        return KilledReason.PIDS, sig
    if sig is None:
        return None, None
    if sig == signal.SIGXCPU:
        return KilledReason.CPU, sig
    if sig == signal.SIGXFSZ:
        return KilledReason.FILE_SIZE, sig
    if sig == signal.SIGKILL and cpu_s is not None and cpu_s >= limits.cpu_s:
        return KilledReason.CPU, sig
    return KilledReason.SIGNAL, sig
