"""What the routes share: one `Service` per running app, built at start-up by app.py."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request, WebSocket

from qlp.api.limits import RateLimits
from qlp.api.metrics import Metrics
from qlp.api.refusals import RefusalTally
from qlp.auth.service import AuthService
from qlp.capsule.base import CapsuleStore
from qlp.config import Settings
from qlp.engine.runner import IntentRunner
from qlp.engine.wiring import Runtime
from qlp.scratch import Scratch
from qlp.store.audit import AuditStore
from qlp.store.blobs import BlobStore
from qlp.store.intent_queries import IntentQueries
from qlp.store.reviews import ReviewStore


@dataclass
class Service:
    settings: Settings
    runtime: Runtime
    runner: IntentRunner
    auth: AuthService
    audit: AuditStore
    queries: IntentQueries
    reviews: ReviewStore
    capsules: CapsuleStore
    blobs: BlobStore  # file contents by sha256
    limits: RateLimits
    refusals: RefusalTally  # refused requests, counted into audit rows
    metrics: Metrics
    public_key: str  # ed25519:<base64>, the key capsules are signed with
    public_key_pem: str
    scratch: Scratch  # this process's folder under QLP_HOME/tmp (src/qlp/scratch.py)


async def service(request: Request) -> Service:
    # async on purpose: FastAPI runs a plain `def` dependency in a worker thread, a thread
    # hand-off on every request for one attribute read.
    found: Service = request.app.state.service
    return found


def ws_service(websocket: WebSocket) -> Service:
    found: Service = websocket.app.state.service
    return found
