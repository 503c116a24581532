"""Running the app under uvicorn (`qlp serve`)."""

from __future__ import annotations

import signal
import socket
from types import FrameType

import uvicorn

from qlp.api.app import create_app
from qlp.config import Settings
from qlp.errors import QLPError, UserInputError


def serve(settings: Settings, *, host: str | None = None, port: int | None = None) -> None:
    """Serve until SIGINT/SIGTERM. Shutdown stops accepting connections, lets open requests
    finish (up to QLP_SERVER_SHUTDOWN_GRACE_S), then interrupts running intents, whose
    committed state lets the next start resume them."""
    host = host or settings.server_host
    port = settings.server_port if port is None else port
    if not 0 <= port < 65536:  # 0: any free port (uvicorn's start-up line names it)
        raise UserInputError(f"--port: {port} is not a TCP port (0-65535)")
    trusted = settings.server_forwarded_allow_ips.strip()
    failed: list[QLPError] = []
    holder: list[uvicorn.Server] = []

    def startup_failed(exc: QLPError) -> None:
        failed.append(exc)
        holder[0].should_exit = True  # stop at once; the error is reported below

    sock = _listen(host, port)
    config = uvicorn.Config(
        create_app(settings, on_startup_error=startup_failed),
        host=host,
        port=port,
        log_level=settings.log_level,
        access_log=False,  # the request middleware logs each request with its id and user
        proxy_headers=bool(trusted),
        forwarded_allow_ips=trusted or None,
        server_header=False,
        timeout_graceful_shutdown=int(settings.server_shutdown_grace_s),
        lifespan="on",
    )
    server = uvicorn.Server(config)
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
    finally:
        sock.close()
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
