"""Request limits: per-identity rate limits (through the `limits` library) and the body size
limit (an ASGI middleware that stops reading as soon as a body is too large).

Rate-limit counters live in this process's memory: one server, one set of counters. Several
replicas behind a load balancer would each count separately (a shared storage backend of the
`limits` library would fix that; see docs/API.md).
"""

from __future__ import annotations

import math
import time

from limits import RateLimitItemPerMinute
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from qlp.api.problems import write_problem
from qlp.errors import LimitExceededError


class RateLimits:
    def __init__(self, *, login_per_minute: int, submit_per_minute: int) -> None:
        self._limiter = MovingWindowRateLimiter(MemoryStorage())
        self._login = RateLimitItemPerMinute(login_per_minute)
        self._submit = RateLimitItemPerMinute(submit_per_minute)

    def _hit(self, item: RateLimitItemPerMinute, what: str, *keys: str) -> None:
        for key in keys:
            if not self._limiter.hit(item, what, key):
                stats = self._limiter.get_window_stats(item, what, key)
                wait = max(1, math.ceil(stats.reset_time - time.time()))
                raise LimitExceededError(
                    f"too many {what} attempts; try again in {wait} s", retry_after_s=wait
                )

    def login(self, client_ip: str, username: str) -> None:
        """Counted per client address and per account name, so neither one address trying
        many names nor many addresses trying one name gets more than the limit."""
        self._hit(self._login, "login", f"ip:{client_ip}", f"user:{username.lower()}")

    def refresh(self, client_ip: str) -> None:
        """Refreshes share the login budget of the client address (not of any account)."""
        self._hit(self._login, "login", f"ip:{client_ip}")

    def submit(self, user_id: str) -> None:
        self._hit(self._submit, "submission", f"user:{user_id}")


class BodySizeLimit:
    """Refuses bodies over `limit` bytes (413) without reading them whole: by Content-Length
    when sent, else by counting while the app reads. `overrides` maps a path suffix to a
    larger limit (capsule uploads)."""

    def __init__(self, app: ASGIApp, *, limit: int, overrides: dict[str, int]) -> None:
        self.app = app
        self.limit = limit
        self.overrides = overrides

    def _limit_for(self, path: str) -> int:
        for suffix, limit in self.overrides.items():
            if path.endswith(suffix):
                return limit
        return self.limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self._limit_for(scope["path"])
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None:
            try:
                too_big = int(declared) > limit
            except ValueError:
                too_big = False  # the server rejects a malformed header itself
            if too_big:
                await _too_large(scope, send, limit)
                return
        seen = 0

        async def counting_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    # An HTTP error, so the framework answers 413 whatever is reading.
                    raise HTTPException(413, f"the request body is larger than {limit} bytes")
            return message

        await self.app(scope, counting_receive, send)


async def _too_large(scope: Scope, send: Send, limit: int) -> None:
    detail = f"the request body is larger than {limit} bytes"
    await write_problem(scope, send, 413, "payload_too_large", detail)
