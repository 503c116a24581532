"""The Docker backend, for production hosts (docker SDK; the engine may be local or remote).

One container per session, created on the first command and removed when the session ends;
each command is a `docker exec` in it. The container: no network (network_mode=none), read-only
root filesystem, tmpfs /tmp, every capability dropped, no-new-privileges, QLP's seccomp
deny-list, memory (no swap) / pids / CPU limits, rlimits as ulimits, a non-root user, the
workspace bind-mounted at /workspace, tini as PID 1. The Docker socket is never mounted.

A command that must be stopped (deadline, output cap, process limit) is stopped by killing the
container: `docker exec` has no kill, and killing PID 1 takes every process of the session
with it. The next command starts the container again (the workspace persists; /tmp does not).
Container-level limits (memory, pids, CPUs, ulimits) come from the limits of the command that
created the container; a command asking for different ones gets a fresh container.
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
)
from qlp.sandbox.output import CappedBuffer
from qlp.sandbox.rlimits import classify
from qlp.sandbox.workspace import Identity, WorkspaceLease, check_workspace, sandbox_identity

INSTALL_HINT = (
    "install Docker (Debian: apt-get install docker.io), start the engine, "
    "or point QLP_SANDBOX_DOCKER_HOST at one"
)
DEFAULT_IMAGES = {"python": "qlp-sandbox-python:local"}
CONTAINER_PATH = "/usr/local/bin:/usr/bin:/bin"
CONTAINER_TMP = "/tmp"  # noqa: S108 - the container's own tmpfs
IDLE_COMMAND = ["sleep", "infinity"]
MONITOR_INTERVAL_S = 0.25
LABEL = "qlp.sandbox"


@dataclass
class DockerConfig:
    base_url: str | None = None
    images: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_IMAGES))
    default_limits: Limits = field(default_factory=Limits)
    uid: int = 65534
    gid: int = 65534
    tmp_size_bytes: int = 256 * 1024 * 1024
    path: str = CONTAINER_PATH


def _container_limits(lim: Limits) -> tuple[int, int, float, int, int, int]:
    return (lim.memory_bytes, lim.pids, lim.cpus, lim.file_size_bytes, lim.open_files, lim.cpu_s)


class DockerSandbox:
    name = "docker"

    def __init__(self, config: DockerConfig) -> None:
        self.config = config
        self.default_limits = config.default_limits
        self._client: Any = None

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
        self._lock = asyncio.Lock()

    @property
    def workspace(self) -> Path:
        return self._workspace

    # -- container lifecycle (blocking; called in threads) -------------------------------
    def _create_container(self, lim: Limits) -> None:
        from docker.types import Mount, Ulimit

        sb = self.sandbox
        ident: Identity = sb.identity
        profile = json.dumps(seccomp.oci_profile())
        env = dict(BASE_ENV)
        env["PATH"] = sb.config.path
        container = sb.client().containers.create(
            self.image,
            command=IDLE_COMMAND,
            name=f"qlp-sbx-{secrets.token_hex(6)}",
            init=True,
            detach=True,
            network_mode="bridge" if self.network else "none",
            read_only=True,
            tmpfs={CONTAINER_TMP: f"rw,nosuid,nodev,size={sb.config.tmp_size_bytes},mode=1777"},
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
            user=f"{ident.uid}:{ident.gid}",
            working_dir=WORKSPACE,
            hostname="qlp-sandbox",
            environment=env,
            mounts=[Mount(target=WORKSPACE, source=str(self._workspace), type="bind")],
            ipc_mode="private",
            labels={LABEL: "1"},
        )
        self.container_id = container.id
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
        self.container_id = None
        self._container_limits = None

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
