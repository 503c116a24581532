"""Running the app under uvicorn (`qlp serve`)."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import FrameType
from typing import Any, Final
from urllib.parse import urlsplit

import h11
import uvicorn
from sqlalchemy.engine import make_url
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.server import ServerState

from qlp.api.app import API_PREFIX, create_app
from qlp.config import Settings
from qlp.engine.wiring import DEFAULT_MODELS
from qlp.errors import QLPError, UserInputError

# `qlp serve --workers N`: at most this many API processes (api/supervisor.py).
MAX_PROCESSES: Final = 64
BACKLOG: Final = 2048  # uvicorn's default: connections queue here while processes start


@dataclass(frozen=True)
class Listening:
    """What `qlp serve` says once it accepts requests: where, and with what."""

    url: str
    details: list[tuple[str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        width = max((len(label) for label, _ in self.details), default=0)
        out = [
            f"qlp serve: listening on {self.url} (API {self.url}{API_PREFIX}, docs {self.url}/docs)"
        ]
        out += [f"  {label.ljust(width)}  {value}" for label, value in self.details]
        return out


def serve(
    settings: Settings,
    *,
    host: str | None = None,
    port: int | None = None,
    on_ready: Callable[[Listening], None] | None = None,
    worker: bool = True,
    processes: int = 1,
    on_notice: Callable[[str], None] | None = None,
) -> None:
    """Serve until SIGINT/SIGTERM. `on_ready` is called once the server accepts requests
    (the service opened, the socket listening; with `processes` > 1, once every API process
    does). Shutdown stops accepting connections, lets open requests finish (up to
    QLP_SERVER_SHUTDOWN_GRACE_S), then interrupts running intents, whose committed state
    lets the next start resume them.

    `processes` > 1 (`--workers N`): this process binds the socket, starts the embedded
    PostgreSQL (if used) and migrates, then supervises N spawned API processes serving on
    that socket (docs/ARCHITECTURE.md "Several API processes"). `on_notice` hears about a
    process that exited unexpectedly and was replaced."""
    host = host or settings.server_host
    port = settings.server_port if port is None else port
    if not 0 <= port < 65536:  # 0: any free port (the ready line names it)
        raise UserInputError(f"--port: {port} is not a TCP port (0-65535)")
    if not 1 <= processes <= MAX_PROCESSES:
        raise UserInputError(
            f"--workers: expected a number of API processes from 1 to {MAX_PROCESSES}, "
            f"got {processes}"
        )
    sock = _listen(host, port)
    try:
        if processes == 1:

            def started() -> None:
                if on_ready is not None:
                    address = sock.getsockname()
                    on_ready(describe(settings, address, worker=worker, pids=[os.getpid()]))

            serve_on(settings, sock, worker=worker, started=started)
        else:
            sock.listen(BACKLOG)  # connections queue here while processes start or restart
            from qlp.api.supervisor import Supervisor  # imports this module: not at the top

            Supervisor(settings, sock, processes, worker, on_ready, on_notice).run()
    finally:
        sock.close()


def serve_on(
    settings: Settings, sock: socket.socket, *, worker: bool, started: Callable[[], None]
) -> None:
    """One API process: the app under uvicorn on `sock`, until SIGINT/SIGTERM."""
    trusted = settings.server_forwarded_allow_ips.strip()
    failed: list[QLPError] = []
    holder: list[uvicorn.Server] = []

    def startup_failed(exc: QLPError) -> None:
        failed.append(exc)
        holder[0].should_exit = True  # stop at once; the error is reported below

    host, port = sock.getsockname()[:2]
    config = uvicorn.Config(
        create_app(settings, worker=worker, on_startup_error=startup_failed),
        host=host,
        port=port,
        # h11 (not httptools) bounds the request head while it arrives: a head larger than
        # QLP_SERVER_MAX_HEADER_BYTES is refused with 431 before it is buffered whole.
        http=_bounded_h11(settings.server_max_headers),
        h11_max_incomplete_event_size=settings.server_max_header_bytes,
        log_level=settings.log_level,
        access_log=False,  # the request middleware logs each request with its id and user
        proxy_headers=bool(trusted),
        forwarded_allow_ips=trusted or None,
        server_header=False,
        timeout_graceful_shutdown=int(settings.server_shutdown_grace_s),
        lifespan="on",
        backlog=BACKLOG,
    )
    server = _Server(config, started)
    holder.append(server)
    # uvicorn handles SIGINT/SIGTERM itself, then re-raises the signal once it has shut down
    # (into the handler that was there before). A finished graceful shutdown is a normal
    # exit, so that handler does nothing and the process exits 0.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _stopped)
    try:
        server.run(sockets=[sock])
    except SystemExit as exc:  # uvicorn gives up on start-up after logging why
        raise QLPError(f"the server could not start (uvicorn exit {exc.code})") from None
    if failed:
        raise failed[0]


def _listen(host: str, port: int) -> socket.socket:
    """The listening socket, bound here so that a taken port or an unknown host is one clear
    error before anything starts."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise UserInputError(f"--host: cannot use {host!r}: {exc.strerror}") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise QLPError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.set_inheritable(True)
    return sock


def _stopped(signum: int, frame: FrameType | None) -> None:
    return None


class _Server(uvicorn.Server):
    """uvicorn's server, telling `on_started` once the app is up and the socket accepts."""

    def __init__(self, config: uvicorn.Config, on_started: Callable[[], None]) -> None:
        super().__init__(config)
        self._on_started = on_started

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started and not self.should_exit:
            self._on_started()


def describe(
    settings: Settings, address: Any, *, worker: bool = True, pids: Sequence[int] = ()
) -> Listening:
    """The ready line's content: the bound address (the real port, also for --port 0), the
    model, database, storage and sandbox in use, the API processes serving (`pids`), and a
    warning when no model is set. Never a password, key or query string."""
    host, port = str(address[0]), int(address[1])
    url = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
    running = settings.server_max_running
    if not worker:
        work = "none (--no-worker): intents run on `qlp worker` processes"
    elif len(pids) > 1:
        work = f"in each API process, {running} intents at once ({running * len(pids)} in all)"
    else:
        work = f"in this process, {running} intents at once"
    details = [
        ("model", _model(settings)),
        ("database", _database(settings)),
        ("storage", _storage(settings)),
        ("sandbox", _sandbox(settings)),
        ("worker", work),
    ]
    if len(pids) > 1:
        listed = ", ".join(map(str, pids))
        details.append(("serving", f"{len(pids)} API processes on one socket (pids {listed})"))
    elif pids:
        details.append(("serving", f"1 API process (pid {pids[0]})"))
    warnings = []
    if settings.llm_provider is None:
        warnings.append(
            "no model is configured: every intent will fail until QLP_LLM_PROVIDER "
            "(openai, azure, anthropic or scripted) and its key are set and the server is "
            "restarted"
        )
    return Listening(url=url, details=details, warnings=warnings)


def _model(settings: Settings) -> str:
    provider = settings.llm_provider
    if provider is None:
        return "none configured (QLP_LLM_PROVIDER)"
    if provider == "scripted":
        return f"scripted, answers from {settings.llm_script}"
    if provider == "azure":
        return (
            f"azure deployment {settings.llm_model} at {_no_query(settings.azure_openai_endpoint)}"
        )
    model = settings.llm_model or DEFAULT_MODELS.get(provider, "?")
    if settings.llm_base_url:
        return f"{provider} {model} at {_no_query(settings.llm_base_url)}"
    return f"{provider} {model}"


def _database(settings: Settings) -> str:
    if settings.database_url is None:
        return f"embedded PostgreSQL in {settings.home / 'postgres'}"
    url = make_url(settings.database_url)
    where = f"{url.host or 'localhost'}:{url.port or 5432}"
    return f"PostgreSQL at {where}, database {url.database}"


def _storage(settings: Settings) -> str:
    if settings.storage == "azure":
        return f"Azure Blob Storage {_no_query(settings.storage_url)}"
    return f"local folder {settings.home / 'capsules'}"


def _sandbox(settings: Settings) -> str:
    if not settings.validation_enabled:
        return "none: validation is off (QLP_VALIDATE=false), generated code is not run"
    return settings.sandbox


def _no_query(url: str | None) -> str:
    if not url:
        return "(unset)"
    parts = urlsplit(url)
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{parts.hostname or ''}{port}{parts.path}"


# -- request head limits ------------------------------------------------------------------
class _BoundedConnection(h11.Connection):
    """h11's server connection that also bounds the header count, and remembers the status
    its last protocol error calls for (431 for a head too large), which uvicorn drops."""

    def __init__(self, max_head_bytes: int, max_headers: int) -> None:
        super().__init__(h11.SERVER, max_incomplete_event_size=max_head_bytes)
        self.max_headers = max_headers
        self.error_status = 400

    def next_event(self) -> h11.Event | type[h11.NEED_DATA] | type[h11.PAUSED]:
        try:
            event = super().next_event()
        except h11.RemoteProtocolError as exc:
            self.error_status = exc.error_status_hint
            raise
        if isinstance(event, h11.Request) and len(event.headers) > self.max_headers:
            self.error_status = 431
            raise h11.RemoteProtocolError(
                f"more than {self.max_headers} header fields", error_status_hint=431
            )
        return event


def _bounded_h11(max_headers: int) -> type[asyncio.Protocol]:
    class BoundedH11Protocol(H11Protocol):
        def __init__(
            self,
            config: uvicorn.Config,
            server_state: ServerState,
            app_state: dict[str, Any],
            _loop: asyncio.AbstractEventLoop | None = None,
        ) -> None:
            super().__init__(config, server_state, app_state, _loop)
            limit = config.h11_max_incomplete_event_size
            assert limit is not None
            self.conn = _BoundedConnection(limit, max_headers)

        def send_400_response(self, msg: str) -> None:
            conn = self.conn
            if not isinstance(conn, _BoundedConnection) or conn.error_status != 431:
                super().send_400_response(msg)
                return
            body = b"Request header fields too large\n"
            headers = [
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ]
            reason = b"Request Header Fields Too Large"
            self.transport.write(
                conn.send(h11.Response(status_code=431, headers=headers, reason=reason)) or b""
            )
            self.transport.write(conn.send(h11.Data(data=body)) or b"")
            self.transport.write(conn.send(h11.EndOfMessage()) or b"")
            self.transport.close()

    return BoundedH11Protocol
