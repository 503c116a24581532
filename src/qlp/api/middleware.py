"""Per request: a request id, the access log line, HTTP metrics and, for every mutating
request, an audit row. A pure ASGI middleware, so what routes put in `request.state`
(the principal, audit details) is visible here after the response."""

from __future__ import annotations

import re
import time
from typing import Any

import structlog
from prometheus_client import Counter, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from ulid import ULID

from qlp.api.metrics import Metrics
from qlp.api.refusals import RefusalTally, aggregated
from qlp.auth.base import Principal
from qlp.store.audit import AuditEntry, AuditStore

log = structlog.get_logger("qlp.api")

_MUTATING = {"POST", "PUT", "PATCH", "DELETE"}
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_MAX_CHILDREN = 1024


def _outcome(status: int) -> str:
    if status < 400:
        return "success"
    return "denied" if status in (401, 403, 404, 429) else "failure"


class RequestContext:
    def __init__(self, app: ASGIApp, *, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics
        # The metric children of each (method, route, status) seen: `labels()` takes a lock
        # and builds its key on every call. Bounded, as methods are whatever clients send.
        self._children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}

    @staticmethod
    def _audit_sinks(scope: Scope) -> tuple[AuditStore, RefusalTally] | None:
        service = getattr(scope["app"].state, "service", None)
        return None if service is None else (service.audit, service.refusals)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        given = headers.get("x-request-id", "")
        request_id = given if _REQUEST_ID.match(given) else str(ULID())
        state: dict[str, Any] = scope.setdefault("state", {})
        state["request_id"] = request_id
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(request_id=request_id)
        status = 500
        audited = False
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status, audited
            if message["type"] == "http.response.start":
                status = int(message["status"])
                message["headers"] = [
                    *message.get("headers", []),
                    (b"x-request-id", request_id.encode()),
                ]
                # The audit row is written before the client sees the answer: a change the
                # client was told about always has its row.
                audited = True
                await self._audit(scope, headers, state, status)
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            if scope["type"] == "http":
                if not audited:  # failed before answering (the 500 is sent further out)
                    await self._audit(scope, headers, state, status)
                self._observe(scope, state, status, time.perf_counter() - started)
            structlog.contextvars.clear_contextvars()

    def _observe(self, scope: Scope, state: dict[str, Any], status: int, elapsed: float) -> None:
        route = scope.get("route")
        template = getattr(route, "path", None) or "unmatched"
        method = scope["method"]
        key = (method, template, status)
        children = self._children.get(key)
        if children is None:
            children = (
                self.metrics.http_requests.labels(method, template, str(status)),
                self.metrics.http_latency.labels(method, template),
            )
            if len(self._children) < _MAX_CHILDREN:
                self._children[key] = children
        children[0].inc()
        children[1].observe(elapsed)
        principal = state.get("principal")
        log.info(
            "http.request",
            method=method,
            route=template,
            status=status,
            ms=round(elapsed * 1000, 1),
            user_id=principal.user_id if isinstance(principal, Principal) else None,
        )

    async def _audit(
        self, scope: Scope, headers: dict[str, str], state: dict[str, Any], status: int
    ) -> None:
        if scope["type"] != "http" or scope["method"] not in _MUTATING:
            return
        route = scope.get("route")
        principal = state.get("principal")
        actor = principal.user_id if isinstance(principal, Principal) else None
        client = scope.get("client")
        name = getattr(route, "name", None) or "unmatched"
        sinks = self._audit_sinks(scope)
        if sinks is None:
            return
        store, refusals = sinks
        entry = AuditEntry(
            actor=str(actor or state.get("actor") or "anonymous"),
            action=name,
            outcome=_outcome(status),
            resource=scope["path"][:500],
            status_code=status,
            client_ip=client[0] if client else None,
            user_agent=headers.get("user-agent", "")[:500] or None,
            request_id=state.get("request_id"),
            details=dict(state.get("audit") or {}),
        )
        if aggregated(status, actor is not None, bool(state.get("actor"))):
            refusals.note(entry)
            return
        try:
            await store.append(entry)
        except Exception:
            log.exception("audit.append_failed", action=name, path=scope["path"])
