"""The sandbox port: run commands that an LLM wrote, in isolation, against one workspace.

A `Sandbox` is a configured backend (bubblewrap, docker, gvisor). It opens *sessions*: a
session is bound to one task's workspace directory, which the code sees read-write at
`/workspace`, so successive commands of the session see each other's files. Every command
runs under explicit `Limits`, with an explicit environment (nothing of the host's leaks in),
and comes back as an `ExecResult` saying how it ended and, when it was stopped, why.

    async with sandbox.session(workspace) as s:
        result = await s.run(["python", "-m", "pytest", "-q"], env={"CI": "1"})
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from qlp.errors import SandboxError, UserInputError

WORKSPACE = "/workspace"
MiB = 1024 * 1024

# The environment every command starts from; the caller's `env` is laid over it. The host's
# own environment is never consulted. (Paths here are inside the sandbox: its private /tmp.)
BASE_ENV: Mapping[str, str] = {
    "HOME": "/tmp",  # noqa: S108
    "LANG": "C.UTF-8",
    "LC_ALL": "C.UTF-8",
    "PYTHONDONTWRITEBYTECODE": "1",
    "PYTHONUNBUFFERED": "1",
    "TMPDIR": "/tmp",  # noqa: S108
}


class KilledReason(enum.StrEnum):
    """Why the sandbox stopped a command (None in ExecResult when it ended by itself)."""

    TIMEOUT = "timeout"  # wall-clock limit
    CPU = "cpu"  # CPU-seconds limit (SIGXCPU)
    MEMORY = "memory"  # memory limit: the kernel's OOM killer fired in the sandbox
    PIDS = "pids"  # process-count limit reached (fork failed)
    OUTPUT = "output"  # stdout or stderr passed the output cap
    FILE_SIZE = "file_size"  # a write passed the file-size limit (SIGXFSZ)
    SIGNAL = "signal"  # killed by some other signal


@dataclass(frozen=True)
class Limits:
    """Resource limits for one command. Defaults suit a unit-test run of a small project."""

    timeout_s: float = 120.0
    cpu_s: int = 120
    memory_bytes: int = 1024 * MiB
    pids: int = 256
    file_size_bytes: int = 64 * MiB
    open_files: int = 256
    output_bytes: int = 1 * MiB
    cpus: float = 1.0

    def __post_init__(self) -> None:
        checks = {
            "timeout_s": self.timeout_s > 0,
            "cpu_s": self.cpu_s >= 1,
            "memory_bytes": self.memory_bytes >= 16 * MiB,
            "pids": self.pids >= 8,
            "file_size_bytes": self.file_size_bytes >= 1024,
            "open_files": self.open_files >= 16,
            "output_bytes": self.output_bytes >= 1024,
            "cpus": self.cpus > 0,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            shown = ", ".join(f"{n}={getattr(self, n)!r}" for n in bad)
            raise UserInputError(f"sandbox limit out of range: {shown}")

    def with_(self, **changes: Any) -> Limits:
        return replace(self, **changes)


@dataclass(frozen=True)
class ExecResult:
    """How one command ended. `exit_code` follows the shell: 128+N when killed by signal N."""

    argv: tuple[str, ...]
    exit_code: int
    stdout: str
    stderr: str
    wall_s: float
    backend: str
    killed_reason: KilledReason | None = None
    signal: int | None = None
    cpu_s: float | None = None
    peak_memory_bytes: int | None = None
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and self.killed_reason is None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["argv"] = list(self.argv)
        data["notes"] = list(self.notes)
        data["killed_reason"] = self.killed_reason.value if self.killed_reason else None
        data["ok"] = self.ok
        return data


@runtime_checkable
class SandboxSession(Protocol):
    """Commands against one workspace. Obtained from `Sandbox.session`, never built directly."""

    @property
    def workspace(self) -> Path: ...

    async def run(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        limits: Limits | None = None,
        cwd: str = WORKSPACE,
        stdin: bytes | None = None,
    ) -> ExecResult: ...


@runtime_checkable
class Sandbox(Protocol):
    """A configured backend. `check()` raises SandboxError saying what to install."""

    name: str
    default_limits: Limits

    def check(self) -> None: ...

    def session(
        self, workspace: Path, *, network: bool = False, language: str = "python"
    ) -> AbstractAsyncContextManager[SandboxSession]: ...


def merged_env(env: Mapping[str, str] | None, path: str) -> dict[str, str]:
    """BASE_ENV + PATH + the caller's variables (which win). Keys and values must be text."""
    out = dict(BASE_ENV)
    out["PATH"] = path
    for key, value in (env or {}).items():
        if not key or "=" in key or "\0" in key or "\0" in value:
            raise UserInputError(f"invalid environment variable name or value: {key!r}")
        out[key] = value
    return out


def check_argv(argv: Sequence[str]) -> tuple[str, ...]:
    if isinstance(argv, str | bytes) or not argv:
        raise UserInputError("a sandbox command is a non-empty list of arguments")
    if any(not isinstance(a, str) or "\0" in a for a in argv):
        raise UserInputError("sandbox arguments must be text without NUL characters")
    return tuple(argv)


@dataclass(frozen=True)
class Command:
    """One `run` call's arguments, checked and completed with the session's defaults."""

    argv: tuple[str, ...]
    env: dict[str, str]
    limits: Limits
    cwd: str


def prepare_command(
    *,
    closed: bool,
    argv: Sequence[str],
    env: Mapping[str, str] | None,
    limits: Limits | None,
    default_limits: Limits,
    path: str,
    cwd: str,
) -> Command:
    """What every backend's `run` checks before it starts anything."""
    if closed:
        raise SandboxError("this sandbox session is closed")
    return Command(
        argv=check_argv(argv),
        env=merged_env(env, path),
        limits=limits or default_limits,
        cwd=check_cwd(cwd),
    )


def check_cwd(cwd: str) -> str:
    if not cwd.startswith("/") or "\0" in cwd:
        raise UserInputError(f"sandbox working directory must be an absolute path: {cwd!r}")
    return cwd


def tmpfs_sizes(limits: Limits) -> tuple[int, int]:
    """Sizes of a command's /tmp and /dev/shm. Files there are memory: together they stay
    within the memory limit, which without cgroups (rlimits only) would not count them."""
    return limits.memory_bytes * 3 // 4, limits.memory_bytes // 4


def signal_of(exit_code: int) -> int | None:
    """Shells and bwrap report death by signal N as 128+N."""
    return exit_code - 128 if 128 < exit_code < 128 + 65 else None
