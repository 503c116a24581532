"""The Docker backend, for production hosts (docker SDK; the engine may be local or remote).

One container per session, created on the first command and removed when the session ends;
each command is a `docker exec` in it. The container: no network (network_mode=none), read-only
root filesystem, tmpfs /tmp and /dev/shm sized from the memory limit, every capability
dropped, no-new-privileges, QLP's seccomp policy, memory (no swap) / pids / CPU limits,
rlimits as ulimits, non-root users, the workspace bind-mounted at /workspace, tini as PID 1.
The Docker socket is never mounted.

tini and the idle command run as a uid of their own (65533), commands as the sandbox uid:
a command cannot write PID 1's memory through /proc (same uid, no Yama), and when a command
ends, one `kill -9 -1` as the sandbox uid ends everything it left behind (a daemon, a
double-forked sleeper), so nothing of a command outlives it. A command that must be stopped
(deadline, output cap, process limit) is stopped by killing the container: `docker exec` has
no kill, and killing PID 1 takes every process of the session with it. The next command
starts the container again (the workspace persists; /tmp does not). Container-level limits
(memory, pids, CPUs, ulimits) come from the limits of the command that created the
container; a command asking for different ones gets a fresh container.

Every container is labelled with its owner (host name and QLP's pid) and registered with the
reaper, which removes it if QLP dies; what a crash left anyway (QLP and its reaper killed
together) is removed by the next QLP on the same host when it checks the engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import threading
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qlp.errors import SandboxError
from qlp.sandbox import seccomp
from qlp.sandbox.base import (
    BASE_ENV,
    WORKSPACE,
    ExecResult,
    KilledReason,
    Limits,
    prepare_command,
    tmpfs_sizes,
)
from qlp.sandbox.output import CappedBuffer
from qlp.sandbox.owners import label_owner_dead, owner_label
from qlp.sandbox.reaper import Reaper
from qlp.sandbox.rlimits import classify
from qlp.sandbox.workspace import WorkspaceLease, check_workspace, sandbox_identity

INSTALL_HINT = (
    "install Docker (Debian: apt-get install docker.io), start the engine, "
    "or point QLP_SANDBOX_DOCKER_HOST at one"
)
DEFAULT_IMAGES = {"python": "qlp-sandbox-python:local"}
CONTAINER_PATH = "/usr/local/bin:/usr/bin:/bin"
CONTAINER_TMP = "/tmp"  # noqa: S108 - the container's own tmpfs
IDLE_COMMAND = ["sleep", "infinity"]
# Run as the sandbox uid after each command: every process of that uid in the container, but
# PID 1 and the shell itself, is killed (kill(-1) stays inside the container's PID namespace).
REAP_COMMAND = ["/bin/sh", "-c", "kill -9 -1 2>/dev/null; exit 0"]
MONITOR_INTERVAL_S = 0.25
LABEL = "qlp.sandbox"
OWNER_LABEL = "qlp.owner"
INIT_UID = 65533


@dataclass
class DockerConfig:
    base_url: str | None = None
    images: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_IMAGES))
    default_limits: Limits = field(default_factory=Limits)
    uid: int = 65534
    gid: int = 65534
    path: str = CONTAINER_PATH


def _container_limits(lim: Limits) -> tuple[int, int, float, int, int, int]:
    return (lim.memory_bytes, lim.pids, lim.cpus, lim.file_size_bytes, lim.open_files, lim.cpu_s)


class DockerSandbox:
    name = "docker"

    def __init__(self, config: DockerConfig) -> None:
        self.config = config
        self.default_limits = config.default_limits
        self._client: Any = None
        self._swept = False

    def client(self) -> Any:
        if self._client is None:
            try:
                import docker
            except ImportError as exc:  # pragma: no cover - it is a dependency
                raise SandboxError(
                    f"docker sandbox unavailable: {exc}; pip install docker"
                ) from None
            try:
                if self.config.base_url:
                    client = docker.DockerClient(base_url=self.config.base_url, timeout=60)
                else:
                    client = docker.from_env(timeout=60)
                client.ping()
            except Exception as exc:
                where = self.config.base_url or "the default socket"
                raise SandboxError(
                    f"docker sandbox unavailable: no Docker engine answers at {where} "
                    f"({type(exc).__name__}); {INSTALL_HINT}"
                ) from None
            self._client = client
        return self._client

    def image_for(self, language: str) -> str:
        image = self.config.images.get(language)
        if image is None:
            known = ", ".join(sorted(self.config.images)) or "none"
            raise SandboxError(
                f"no sandbox image configured for language {language!r} (configured: {known}); "
                "set QLP_SANDBOX_DOCKER_IMAGES"
            )
        return image

    def check(self, language: str = "python") -> None:
        import docker.errors

        client = self.client()
        image = self.image_for(language)
        try:
            client.images.get(image)
        except docker.errors.ImageNotFound:
            raise SandboxError(
                f"docker sandbox image {image!r} is not on the engine: build it from this "
                "host's runtime with `qlp sandbox build-image`, or pull/set another image "
                "(QLP_SANDBOX_DOCKER_IMAGES)"
            ) from None
        self.identity = sandbox_identity(self.config.uid, self.config.gid)
        # tini and the idle command: an unprivileged uid that is not the commands' own.
        self.init_uid = INIT_UID if self.identity.uid != INIT_UID else INIT_UID - 1
        if not self._swept:
            self._swept = True
            self.sweep()

    def sweep(self) -> list[str]:
        """Remove the containers that QLP processes on this host left when they died."""
        removed: list[str] = []
        api = self.client().api
        # The low-level list: the high-level one inspects each container, and one that its
        # owner removes meanwhile would answer 404.
        for container in api.containers(all=True, filters={"label": LABEL}):
            if not label_owner_dead((container.get("Labels") or {}).get(OWNER_LABEL, "")):
                continue
            with contextlib.suppress(Exception):
                api.remove_container(container["Id"], force=True)
                removed.append(container["Id"])
        return removed

    @asynccontextmanager
    async def session(
        self, workspace: Path, *, network: bool = False, language: str = "python"
    ) -> AsyncIterator[DockerSession]:
        await asyncio.to_thread(self.check, language)
        path = check_workspace(workspace)
        lease = WorkspaceLease(path, self.identity)
        await asyncio.to_thread(lease.acquire)
        sess = DockerSession(self, path, self.image_for(language), network=network)
        try:
            yield sess
        finally:
            sess.closed = True
            try:
                await asyncio.to_thread(sess.remove_container)
            finally:
                await asyncio.to_thread(lease.release)


class DockerSession:
    def __init__(self, sandbox: DockerSandbox, workspace: Path, image: str, *, network: bool):
        self.sandbox = sandbox
        self._workspace = workspace
        self.image = image
        self.network = network
        self.closed = False
        self.container_id: str | None = None
        self._container_limits: tuple[int, int, float, int, int, int] | None = None
        self._needs_start = False
        self._reaper_token: int | None = None
        self._lock = asyncio.Lock()

    @property
    def workspace(self) -> Path:
        return self._workspace

    # -- container lifecycle (blocking; called in threads) -------------------------------
    def _create_container(self, lim: Limits) -> None:
        from docker.types import Mount, Ulimit

        sb = self.sandbox
        profile = json.dumps(seccomp.oci_profile())
        env = dict(BASE_ENV)
        env["PATH"] = sb.config.path
        tmp_bytes, shm_bytes = tmpfs_sizes(lim)
        container = sb.client().containers.create(
            self.image,
            command=IDLE_COMMAND,
            name=f"qlp-sbx-{secrets.token_hex(6)}",
            init=True,
            detach=True,
            network_mode="bridge" if self.network else "none",
            read_only=True,
            tmpfs={CONTAINER_TMP: f"rw,nosuid,nodev,size={tmp_bytes},mode=1777"},
            shm_size=shm_bytes,
            cap_drop=["ALL"],
            security_opt=["no-new-privileges:true", f"seccomp={profile}"],
            pids_limit=lim.pids + 2,  # + tini and the idle command
            mem_limit=lim.memory_bytes,
            memswap_limit=lim.memory_bytes,
            nano_cpus=int(lim.cpus * 1e9),
            ulimits=[
                Ulimit(name="cpu", soft=lim.cpu_s, hard=lim.cpu_s + 1),
                Ulimit(name="fsize", soft=lim.file_size_bytes, hard=lim.file_size_bytes),
                Ulimit(name="nofile", soft=lim.open_files, hard=lim.open_files),
                Ulimit(name="core", soft=0, hard=0),
            ],
            user=f"{sb.init_uid}:{sb.init_uid}",
            working_dir="/",
            hostname="qlp-sandbox",
            environment=env,
            mounts=[Mount(target=WORKSPACE, source=str(self._workspace), type="bind")],
            ipc_mode="private",
            labels={LABEL: "1", OWNER_LABEL: owner_label()},
        )
        self.container_id = container.id
        self._reaper_token = Reaper.get().watch(
            timeout_s=None, container=(sb.config.base_url, container.id)
        )
        self._container_limits = _container_limits(lim)
        self._needs_start = True

    def _ensure_container(self, lim: Limits) -> None:
        if self.container_id is not None and self._container_limits != _container_limits(lim):
            self.remove_container()
        if self.container_id is None:
            self._create_container(lim)
        if self._needs_start:
            self.sandbox.client().api.start(self.container_id)
            self._needs_start = False

    def _kill(self) -> None:
        if self.container_id is not None:
            api = self.sandbox.client().api
            with contextlib.suppress(Exception):
                api.kill(self.container_id)
            # Killing is asynchronous; starting a dying container again would be a no-op.
            with contextlib.suppress(Exception):
                api.wait(self.container_id, timeout=30)
            self._needs_start = True

    def remove_container(self) -> None:
        if self.container_id is None:
            return
        with contextlib.suppress(Exception):
            self.sandbox.client().api.remove_container(self.container_id, force=True)
        if self._reaper_token is not None:
            Reaper.get().forget(self._reaper_token)
            self._reaper_token = None
        self.container_id = None
        self._container_limits = None

    def _reap_leftovers(self) -> None:
        """End every process the command left in the container (see REAP_COMMAND)."""
        api = self.sandbox.client().api
        ident = self.sandbox.identity
        exec_id = api.exec_create(
            self.container_id, REAP_COMMAND, user=f"{ident.uid}:{ident.gid}", workdir="/"
        )["Id"]
        api.exec_start(exec_id)
        code = api.exec_inspect(exec_id).get("ExitCode")
        if code != 0:
            # Could not make sure: a fresh container for the next command, then.
            self._kill()

    def _pids(self) -> tuple[int, int]:
        try:
            stats = self.sandbox.client().api.stats(self.container_id, stream=False, one_shot=True)
            p = stats.get("pids_stats") or {}
            return int(p.get("current", 0)), int(p.get("limit", 0))
        except Exception:
            return 0, 0

    def _oom_events(self, since: float) -> int:
        api = self.sandbox.client().api
        events = api.events(
            since=f"{since - 1:.3f}",
            until=f"{time.time():.3f}",  # a future `until` would make the engine wait for it
            filters={"container": self.container_id, "event": "oom"},
            decode=True,
        )
        return sum(1 for _ in events)

    def _exec(
        self,
        argv: tuple[str, ...],
        env: dict[str, str],
        cwd: str,
        stdin: bytes | None,
        out: CappedBuffer,
        err: CappedBuffer,
        on_overflow: Callable[[], None],
    ) -> str:
        from docker.utils.socket import frames_iter

        api = self.sandbox.client().api
        ident = self.sandbox.identity
        exec_id: str = api.exec_create(
            self.container_id,
            list(argv),
            stdin=stdin is not None,
            user=f"{ident.uid}:{ident.gid}",
            environment=env,
            workdir=cwd,
        )["Id"]
        sock = api.exec_start(exec_id, socket=True)
        raw = getattr(sock, "_sock", sock)
        try:
            if stdin is not None:
                raw.sendall(stdin)
            with contextlib.suppress(OSError):
                raw.shutdown(1)  # SHUT_WR: the command sees end of input
            overflowed = False
            for stream, data in frames_iter(sock, tty=False):  # type: ignore[no-untyped-call]
                if overflowed:
                    continue
                buf = err if stream == 2 else out
                if not buf.feed(data):
                    overflowed = True
                    on_overflow()
        except OSError:
            pass
        finally:
            with contextlib.suppress(Exception):
                sock.close()
        return exec_id

    # -- the port ------------------------------------------------------------------------
    async def run(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        limits: Limits | None = None,
        cwd: str = WORKSPACE,
        stdin: bytes | None = None,
    ) -> ExecResult:
        command = prepare_command(
            closed=self.closed,
            argv=argv,
            env=env,
            limits=limits,
            default_limits=self.sandbox.default_limits,
            path=self.sandbox.config.path,
            cwd=cwd,
        )
        args, lim, full_env, cwd = command.argv, command.limits, command.env, command.cwd
        import docker.errors

        async with self._lock:
            try:
                return await self._run(args, full_env, lim, cwd, stdin)
            except docker.errors.DockerException as exc:
                # Whatever state the container is in now, the next command starts afresh.
                await asyncio.to_thread(self.remove_container)
                raise SandboxError(f"the docker engine failed to run the command: {exc}") from None

    async def _run(
        self, args: tuple[str, ...], env: dict[str, str], lim: Limits, cwd: str, stdin: bytes | None
    ) -> ExecResult:
        await asyncio.to_thread(self._ensure_container, lim)
        # The command's deadline, kept by the reaper too in case QLP stalls or dies.
        assert self.container_id is not None
        token = Reaper.get().watch(
            timeout_s=lim.timeout_s, container=(self.sandbox.config.base_url, self.container_id)
        )
        try:
            return await self._exec_command(args, env, lim, cwd, stdin)
        finally:
            Reaper.get().forget(token)

    async def _exec_command(
        self, args: tuple[str, ...], env: dict[str, str], lim: Limits, cwd: str, stdin: bytes | None
    ) -> ExecResult:
        out = CappedBuffer(lim.output_bytes)
        err = CappedBuffer(lim.output_bytes)
        killed: list[KilledReason] = []
        kill_lock = threading.Lock()

        def stop(reason: KilledReason) -> None:
            with kill_lock:
                if killed:
                    return
                killed.append(reason)
            self._kill()

        loop = asyncio.get_running_loop()
        overflow: asyncio.Future[None] = loop.create_future()

        def on_overflow() -> None:
            # Called in the reader thread, which must go on draining the stream: the engine
            # does not finish killing a container while an exec's output is unread.
            def mark() -> None:
                if not overflow.done():
                    overflow.set_result(None)

            loop.call_soon_threadsafe(mark)

        started_wall = time.time()
        started = time.monotonic()
        worker = asyncio.ensure_future(
            asyncio.to_thread(self._exec, args, env, cwd, stdin, out, err, on_overflow)
        )
        deadline = started + lim.timeout_s
        # The engine answers a stats request only once a second, so the process-count probe
        # runs beside the command instead of in its path; a short command never waits for it.
        probe: asyncio.Future[tuple[int, int]] | None = None
        next_probe = started + 0.5
        try:
            while not worker.done():
                now = time.monotonic()
                if now >= deadline:
                    await asyncio.to_thread(stop, KilledReason.TIMEOUT)
                    break
                if probe is None and now >= next_probe:
                    probe = asyncio.ensure_future(asyncio.to_thread(self._pids))
                waiting: list[asyncio.Future[Any]] = [worker, overflow]
                if probe is not None:
                    waiting.append(probe)
                await asyncio.wait(
                    waiting,
                    timeout=min(MONITOR_INTERVAL_S, deadline - now),
                    return_when=asyncio.FIRST_COMPLETED,
                )
                if overflow.done():
                    await asyncio.to_thread(stop, KilledReason.OUTPUT)
                    break
                if probe is not None and probe.done():
                    current, limit = probe.result()
                    probe = None
                    next_probe = time.monotonic() + MONITOR_INTERVAL_S
                    if limit and current >= limit and not worker.done():
                        await asyncio.to_thread(stop, KilledReason.PIDS)
                        break
            try:
                exec_id = await asyncio.wait_for(worker, timeout=30)
            except TimeoutError:
                raise SandboxError(
                    "the docker engine did not end a killed command in 30s"
                ) from None
        finally:
            if probe is not None:
                probe.cancel()
        if overflow.done() and not killed:
            await asyncio.to_thread(stop, KilledReason.OUTPUT)
        wall = time.monotonic() - started
        api = self.sandbox.client().api
        info = await asyncio.to_thread(api.exec_inspect, exec_id)
        code = info.get("ExitCode")
        exit_code = 137 if code is None else int(code)
        oom = await asyncio.to_thread(self._oom_events, started_wall)
        if oom and not killed:
            # The OOM killer took one process; end the session's others with it.
            await asyncio.to_thread(stop, KilledReason.MEMORY)
        if not killed:
            await asyncio.to_thread(self._reap_leftovers)
        cpu = None  # the engine has no per-exec CPU accounting (see module doc)
        reason, sig = classify(
            exit_code,
            killed=killed[0] if killed else None,
            oom_kills=oom,
            cpu_s=cpu,
            limits=lim,
        )
        return ExecResult(
            argv=args,
            exit_code=exit_code,
            stdout=out.text(),
            stderr=err.text(),
            wall_s=wall,
            backend="docker",
            killed_reason=reason,
            signal=sig,
            cpu_s=cpu,
            peak_memory_bytes=None,
            stdout_truncated=out.truncated,
            stderr_truncated=err.truncated,
        )
