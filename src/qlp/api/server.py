"""Running the app under uvicorn (`qlp serve`)."""

from __future__ import annotations

import signal
from types import FrameType

import uvicorn

from qlp.api.app import create_app
from qlp.config import Settings
from qlp.errors import UserInputError


def serve(settings: Settings, *, host: str | None = None, port: int | None = None) -> None:
    """Serve until SIGINT/SIGTERM. Shutdown stops accepting connections, lets open requests
    finish (up to QLP_SERVER_SHUTDOWN_GRACE_S), then interrupts running intents, whose
    committed state lets the next start resume them."""
    host = host or settings.server_host
    port = settings.server_port if port is None else port
    if not 0 < port < 65536:
        raise UserInputError(f"--port: {port} is not a TCP port (1-65535)")
    trusted = settings.server_forwarded_allow_ips.strip()
    config = uvicorn.Config(
        create_app(settings),
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
    # uvicorn handles SIGINT/SIGTERM itself, then re-raises the signal once it has shut down
    # (into the handler that was there before). A finished graceful shutdown is a normal
    # exit, so that handler does nothing and the process exits 0.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _stopped)
    server.run()
    if server.started is False and not server.should_exit:
        raise UserInputError(f"could not serve on {host}:{port} (see the lines above)")


def _stopped(signum: int, frame: FrameType | None) -> None:
    return None
