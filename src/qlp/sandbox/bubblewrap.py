"""The bubblewrap backend: Linux namespaces, no network, seccomp, cgroup or rlimit limits.

One command is one bwrap invocation (a session shares only its /workspace directory):

    [setpriv --reuid U --regid G ...]    when QLP is root: drop to the sandbox uid first, so
                                         bwrap runs unprivileged in a new user namespace and
                                         RLIMIT_NPROC binds; always: die with QLP
    bwrap --unshare-all --unshare-user --disable-userns --die-with-parent --new-session
          --ro-bind /usr, the runtime env; /workspace read-write; private /tmp, /proc, /dev;
          synthetic /etc/passwd and /etc/group; root filesystem read-only; seccomp filter
    /usr/bin/prlimit --cpu --fsize --nofile --nproc --core [--as] --
    argv

bwrap is PID 1 of the new PID namespace; when it exits, or is killed with QLP's process
group, the kernel kills every process left in the namespace, so nothing outlives a command.
When a cgroup is available the command's processes are placed in it before the command
starts (bwrap waits on --block-fd until that is done).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import select
import shutil
import signal
import stat
import subprocess
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

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
from qlp.sandbox.cgroups import Cgroup, CgroupManager
from qlp.sandbox.process import run_process
from qlp.sandbox.reaper import Reaper
from qlp.sandbox.rlimits import PRLIMIT, classify, prlimit_argv
from qlp.sandbox.runtime import check_runtime, runtime_path
from qlp.sandbox.workspace import Identity, WorkspaceLease, check_workspace, sandbox_identity

INSTALL_HINT = "install bubblewrap and util-linux (Debian: apt-get install bubblewrap util-linux)"
LAUNCHER_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
SANDBOX_HOSTNAME = "qlp-sandbox"


@dataclass
class BubblewrapConfig:
    runtime: Path
    default_limits: Limits = field(default_factory=Limits)
    uid: int = 65534
    gid: int = 65534
    cgroups: Literal["auto", "off"] = "auto"
    bwrap: str = "bwrap"
    setpriv: str = "setpriv"


def _memfd(name: str, data: bytes) -> int:
    fd = os.memfd_create(name, 0)
    os.write(fd, data)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def _usr_merged_links() -> list[str]:
    """Mirror the host's /bin, /lib, ... (symlinks into /usr on merged-/usr systems)."""
    args: list[str] = []
    for name in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        host = Path("/") / name
        if host.is_symlink():
            args += ["--symlink", os.readlink(host), f"/{name}"]
        elif host.is_dir():
            args += ["--ro-bind", str(host), f"/{name}"]
    return args


def _tool(name: str) -> str:
    found = shutil.which(name, path=LAUNCHER_ENV["PATH"])
    if found is None:
        raise SandboxError(f"`{name}` not found; {INSTALL_HINT}")
    return found


def traversable(path: Path, uid: int, gid: int) -> bool:
    """Can uid/gid reach `path` by name (search permission on every ancestor)?"""
    for parent in path.parents:
        st = os.stat(parent)
        if st.st_uid == uid:
            bit = stat.S_IXUSR
        elif st.st_gid == gid:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if not st.st_mode & bit:
            return False
    return True


class MountStage:
    """Makes a workspace that the sandbox uid cannot reach by name (say, under root's 0700
    home) reachable: a holder process in a private mount namespace bind-mounts it on an
    empty, world-searchable directory, and each command joins that namespace (nsenter)
    before dropping privileges. bwrap resolves bind sources by path as the unprivileged uid,
    so an open fd alone does not do. The mount exists only in that namespace and goes away
    with the holder, which dies with QLP."""

    def __init__(self, workspace: Path) -> None:
        self.workspace = workspace
        self.base = Path(tempfile.mkdtemp(prefix="qlp-stage-"))
        self.base.chmod(0o711)
        self.target = self.base / "workspace"
        self.target.mkdir(mode=0o711)
        self.proc: subprocess.Popen[bytes] | None = None

    def open(self) -> None:
        script = 'mount --bind -- "$1" "$2" || exit 1; echo ready; exec sleep infinity'
        self.proc = subprocess.Popen(  # noqa: S603 - fixed argv
            [
                _tool("setpriv"),
                "--pdeathsig=KILL",
                "--",
                _tool("unshare"),
                "--mount",
                "--propagation=private",
                "--",
                "/bin/sh",
                "-c",
                script,
                "sh",
                str(self.workspace),
                str(self.target),
            ],
            env=LAUNCHER_ENV,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if line.strip() != b"ready":
            err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
            self.close()
            raise SandboxError(f"could not stage the workspace for the sandbox: {err.strip()}")

    def prefix(self) -> list[str]:
        assert self.proc is not None
        return [_tool("nsenter"), f"--mount=/proc/{self.proc.pid}/ns/mnt", "--"]

    def close(self) -> None:
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            self.proc.wait()
            for stream in (self.proc.stdout, self.proc.stderr):
                if stream is not None:
                    stream.close()
            self.proc = None
        with contextlib.suppress(OSError):
            self.target.rmdir()
            self.base.rmdir()


class BubblewrapSandbox:
    name = "bubblewrap"

    def __init__(self, config: BubblewrapConfig) -> None:
        self.config = config
        self.default_limits = config.default_limits
        self._cgroups: CgroupManager | None = None
        self._cgroup_note = "cgroups disabled (QLP_SANDBOX_CGROUPS=off)"
        self._checked = False

    # -- availability ------------------------------------------------------------------
    def check(self) -> None:
        if self._checked:
            return
        bwrap = shutil.which(self.config.bwrap)
        setpriv = shutil.which(self.config.setpriv)
        if bwrap is None:
            raise SandboxError(f"bubblewrap sandbox unavailable: `bwrap` not found; {INSTALL_HINT}")
        if setpriv is None or not Path(PRLIMIT).exists():
            raise SandboxError(
                f"bubblewrap sandbox unavailable: setpriv/prlimit not found; {INSTALL_HINT}"
            )
        self._bwrap, self._setpriv = bwrap, setpriv
        self.identity = sandbox_identity(self.config.uid, self.config.gid)
        check_runtime(self.config.runtime, need_under_usr=True, other_uid=self.identity.drop)
        self._bpf = seccomp.bpf_bytes()
        if self.config.cgroups == "auto":
            self._cgroups, self._cgroup_note = CgroupManager.detect()
        probe = subprocess.run(  # noqa: S603 - fixed argv
            [
                *self._launcher(),
                *self._bwrap_args(None, network=False, limits=self.default_limits),
                "--",
                "/usr/bin/true",
            ],
            env=LAUNCHER_ENV,
            capture_output=True,
            timeout=30,
            check=False,
        )
        if probe.returncode != 0:
            detail = probe.stderr.decode(errors="replace").strip().splitlines()
            raise SandboxError(
                "bubblewrap cannot create its namespaces here "
                f"({detail[-1] if detail else f'exit {probe.returncode}'}); unprivileged user "
                "namespaces must be enabled (sysctl kernel.unprivileged_userns_clone=1, "
                "user.max_user_namespaces > 0)"
            )
        self._checked = True

    @property
    def limits_mechanism(self) -> str:
        if self._cgroups is not None:
            return f"{self._cgroup_note} + rlimits"
        return f"rlimits only ({self._cgroup_note})"

    def _launcher(self) -> list[str]:
        args = [self._setpriv, "--pdeathsig=KILL", "--no-new-privs"]
        if self.identity.drop:
            args += [
                f"--reuid={self.identity.uid}",
                f"--regid={self.identity.gid}",
                "--clear-groups",
                "--inh-caps=-all",
                "--bounding-set=-all",
            ]
        return [*args, "--", self._bwrap]

    def _bwrap_args(
        self, workspace: int | Path | None, *, network: bool, limits: Limits
    ) -> list[str]:
        runtime = str(self.config.runtime)
        tmp_bytes, shm_bytes = tmpfs_sizes(limits)
        args = [
            "--unshare-all",
            "--unshare-user",
            "--disable-userns",
            "--die-with-parent",
            "--new-session",
            "--hostname",
            SANDBOX_HOSTNAME,
            "--ro-bind",
            "/usr",
            "/usr",
            *_usr_merged_links(),
            "--ro-bind-try",
            "/etc/ld.so.cache",
            "/etc/ld.so.cache",
            "--ro-bind-try",
            "/etc/localtime",
            "/etc/localtime",
            # Debian's alternatives (awk, which, cc, nodejs...) are links through here.
            "--ro-bind-try",
            "/etc/alternatives",
            "/etc/alternatives",
            "--proc",
            "/proc",
            "--dev",
            "/dev",
            # tmpfs pages are memory that RLIMIT_AS does not see: size both from the limit.
            "--size",
            str(shm_bytes),
            "--tmpfs",
            "/dev/shm",  # noqa: S108 - the sandbox's own, private
            "--size",
            str(tmp_bytes),
            "--tmpfs",
            "/tmp",  # noqa: S108 - the sandbox's own, private
            # After /tmp: a runtime that lives under /tmp must not be hidden by it.
            "--ro-bind",
            runtime,
            runtime,
        ]
        if network:
            args.append("--share-net")
        if isinstance(workspace, int):
            args += ["--bind-fd", str(workspace), WORKSPACE]
        elif workspace is not None:
            args += ["--bind", str(workspace), WORKSPACE]
        return args

    # -- sessions ----------------------------------------------------------------------
    @asynccontextmanager
    async def session(
        self, workspace: Path, *, network: bool = False, language: str = "python"
    ) -> AsyncIterator[BubblewrapSession]:
        self.check()
        path = check_workspace(workspace)
        lease = WorkspaceLease(path, self.identity)
        await asyncio.to_thread(lease.acquire)
        stage: MountStage | None = None
        try:
            if self.identity.drop and not traversable(path, self.identity.uid, self.identity.gid):
                stage = MountStage(path)
                await asyncio.to_thread(stage.open)
            sess = BubblewrapSession(self, path, network=network, stage=stage)
            try:
                yield sess
            finally:
                sess.closed = True
        finally:
            if stage is not None:
                await asyncio.to_thread(stage.close)
            await asyncio.to_thread(lease.release)


class BubblewrapSession:
    def __init__(
        self,
        sandbox: BubblewrapSandbox,
        workspace: Path,
        *,
        network: bool,
        stage: MountStage | None = None,
    ) -> None:
        self.sandbox = sandbox
        self._workspace = workspace
        self.network = network
        self.stage = stage
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
        ident: Identity = sb.identity
        fds: list[int] = []
        group: Cgroup | None = None
        try:
            ws_fd = os.open(self._workspace, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
            fds.append(ws_fd)
            bpf_fd = _memfd("qlp-seccomp", sb._bpf)
            fds.append(bpf_fd)
            passwd_fd = _memfd(
                "qlp-passwd",
                f"sandbox:x:{ident.uid}:{ident.gid}:sandbox:/tmp:/usr/sbin/nologin\n".encode(),
            )
            group_fd = _memfd("qlp-group", f"sandbox:x:{ident.gid}:\n".encode())
            fds += [passwd_fd, group_fd]
            if self.stage is not None:
                cmd = [*self.stage.prefix(), *sb._launcher()]
                cmd += sb._bwrap_args(self.stage.target, network=self.network, limits=lim)
            else:
                cmd = [
                    *sb._launcher(),
                    *sb._bwrap_args(ws_fd, network=self.network, limits=lim),
                ]
            cmd += ["--ro-bind-data", str(passwd_fd), "/etc/passwd"]
            cmd += ["--ro-bind-data", str(group_fd), "/etc/group"]
            cmd += ["--remount-ro", "/", "--chdir", command.cwd, "--clearenv"]
            for key, value in full_env.items():
                cmd += ["--setenv", key, value]
            cmd += ["--seccomp", str(bpf_fd)]
            if sb._cgroups is not None:
                group = await asyncio.to_thread(sb._cgroups.create, "run")
                # +1: bwrap's own PID 1 lives in the cgroup beside the command.
                group.set_limits(lim.memory_bytes, lim.pids + 1, lim.cpus)
            info_r, info_w = os.pipe()
            block_r, block_w = os.pipe()
            fds += [info_r, info_w, block_r, block_w]
            cmd += ["--info-fd", str(info_w), "--block-fd", str(block_r)]
            init = SandboxInit(group, lim.timeout_s)
            cmd += ["--", *prlimit_argv(lim, cgroup=group is not None), *args]
            monitor = _monitor(group) if group is not None else None
            try:
                raw = await run_process(
                    cmd,
                    env=LAUNCHER_ENV,
                    timeout_s=lim.timeout_s,
                    output_cap=lim.output_bytes,
                    stdin=stdin,
                    pass_fds=[fd for fd in fds if fd >= 0],
                    after_spawn=init.handshake(info_r, info_w, block_r, block_w, fds),
                    monitor=monitor,
                    kill=init.kill,
                    after_exit=init.signal,
                )
            finally:
                # The command is over, however it ended: end its PID namespace with it, so
                # nothing it started (or made of bwrap's PID 1) runs on.
                await asyncio.to_thread(init.end)
            stats = group.stats() if group is not None else None
        finally:
            for fd in fds:
                if fd >= 0:
                    with contextlib.suppress(OSError):
                        os.close(fd)
            if group is not None:
                await asyncio.to_thread(group.remove)
        cpu = stats.cpu_s if stats is not None and stats.cpu_s is not None else raw.cpu_s
        reason, sig = classify(
            raw.exit_code,
            killed=raw.killed_reason,
            oom_kills=stats.oom_kills if stats else 0,
            pids_refused=stats.pids_refused if stats else 0,
            cpu_s=cpu,
            limits=lim,
        )
        peak = stats.peak_memory_bytes if stats and stats.peak_memory_bytes else raw.max_rss_bytes
        return ExecResult(
            argv=args,
            exit_code=raw.exit_code,
            stdout=raw.stdout.text(),
            stderr=raw.stderr.text(),
            wall_s=raw.wall_s,
            backend="bubblewrap",
            killed_reason=reason,
            signal=sig,
            cpu_s=cpu,
            peak_memory_bytes=peak,
            stdout_truncated=raw.stdout.truncated,
            stderr_truncated=raw.stderr.truncated,
        )


def _monitor(group: Cgroup) -> Callable[[], KilledReason | None]:
    def check() -> KilledReason | None:
        stats = group.stats()
        if stats.oom_kills:
            return KilledReason.MEMORY
        if stats.pids_refused:
            return KilledReason.PIDS
        return None

    return check


def _read_info(fd: int) -> int | None:
    data = b""
    while b"}" not in data:
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        data += chunk
    try:
        return int(json.loads(data)["child-pid"])
    except (ValueError, KeyError, TypeError):
        return None


class SandboxInit:
    """bwrap's PID 1, held by pidfd from before the command starts until nothing is left.

    bwrap reports that process's pid on --info-fd and waits on --block-fd; while it waits we
    take a pidfd on it (no pid reuse can fool us), put it in the command's cgroup if there is
    one, and register it with the reaper; then let it go on. The command can write that
    process's memory (same uid, no Yama here), clear its parent-death signal and make it
    outlive the run, so when the command ends it is killed through the pidfd: killing a PID
    namespace's init kills everything in the namespace, and the pidfd turns readable only
    once all of them are gone."""

    END_WAIT_S = 30.0

    def __init__(self, group: Cgroup | None, timeout_s: float) -> None:
        self.group = group
        self.timeout_s = timeout_s
        self.pidfd: int | None = None
        self.token: int | None = None

    def handshake(
        self, info_r: int, info_w: int, block_r: int, block_w: int, fds: list[int]
    ) -> Callable[[int], Awaitable[None]]:
        def close(fd: int) -> None:
            os.close(fd)
            fds[fds.index(fd)] = -1

        async def handshake(pid: int) -> None:
            close(info_w)
            close(block_r)
            try:
                child = await asyncio.to_thread(_read_info, info_r)
                if child is not None:
                    await asyncio.to_thread(self._hold, child)
            except BaseException:
                # Never let the command start unheld: bwrap goes on at EOF too.
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)
                raise
            finally:
                with contextlib.suppress(OSError):
                    os.write(block_w, b"1")
                close(block_w)

        return handshake

    def _hold(self, child: int) -> None:
        self.pidfd = os.pidfd_open(child)
        if self.group is not None:
            self.group.add(child)
        self.token = Reaper.get().watch(
            timeout_s=self.timeout_s,
            pidfd=self.pidfd,
            cgroup=self.group.paths() if self.group else None,
        )

    def signal(self) -> None:
        """SIGKILL to PID 1, which ends its namespace; does not wait."""
        if self.pidfd is not None:
            with contextlib.suppress(OSError):
                signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)

    def kill(self) -> None:
        self.signal()
        if self.group is not None:
            self.group.kill_all()

    def end(self) -> None:
        """Kill the namespace and wait until it is empty (bounded), then let the reaper go."""
        if self.pidfd is None:
            return
        try:
            self.signal()
            ready, _, _ = select.select([self.pidfd], [], [], self.END_WAIT_S)
            if not ready:
                raise SandboxError(
                    f"the sandbox's processes did not end within {self.END_WAIT_S:.0f}s of "
                    "being killed"
                )
        finally:
            os.close(self.pidfd)
            self.pidfd = None
            if self.token is not None:
                Reaper.get().forget(self.token)
