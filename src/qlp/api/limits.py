"""Request limits: rate limits (counted in PostgreSQL) and the body size limit (an ASGI
middleware that stops reading as soon as a body is too large).

Logins and refreshes count *failures* only, so that a flood cannot lock out the person who
knows the password (docs/SECURITY.md, "Login flood"):

- per client (an IPv4 address, or an IPv6 /64): `login_per_minute` failed attempts, whatever
  the usernames; past it the client is refused (429) until its count of the last minute drops;
- per username: `login_per_minute` failures from all clients together. Past it the account
  is "under attack": a client that has itself failed on this username within the window is
  refused, unless it is a *known* client of the account (one the account logged in from
  before, `known` below); a client that has not failed on it yet may still try. So many
  addresses trying one name get one guess each per minute, and the real user is never held
  to what other clients did.

Refused attempts are not counted (no password is checked for them), so a lockout ends a
minute after the last counted failure however long the flood goes on.

Counters are in PostgreSQL (`store/counters.py`, a sliding one-minute window), so the limits
hold across every API process and host that shares the database.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Awaitable, Callable

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from qlp.api.problems import write_problem
from qlp.errors import LimitExceededError
from qlp.store.counters import Count, RateCounters


def client_key(address: str) -> str:
    """The identity a client is counted under: its IPv4 address, or its IPv6 /64 (one host
    is usually given a whole /64, so counting single IPv6 addresses would count nothing)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address[:100]
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network(f"{ip}/64", strict=False))
    return str(ip)


def _refused(what: str, count: Count, limit: int) -> LimitExceededError:
    wait = count.wait_s(limit)
    return LimitExceededError(f"too many {what} attempts; try again in {wait} s", wait)


class RateLimits:
    def __init__(
        self, counters: RateCounters, *, login_per_minute: int, submit_per_minute: int
    ) -> None:
        self.counters = counters
        self.login_limit = login_per_minute
        self.submit_limit = submit_per_minute

    @staticmethod
    def _login_names(client_ip: str, username: str) -> tuple[str, str, str]:
        client, user = client_key(client_ip), username.strip().lower()
        return f"login:ip:{client}", f"login:user:{user}", f"login:pair:{client}:{user}"

    async def login_allowed(
        self, client_ip: str, username: str, known: Callable[[], Awaitable[bool]]
    ) -> None:
        """Raises LimitExceededError when this attempt may not be checked. `known` says
        whether the client is one the account logged in from before; it is asked only while
        the username is over its limit."""
        names = self._login_names(client_ip, username)
        counts = await self.counters.read(names)
        by_client, by_user, pair = (counts[n] for n in names)
        if not by_client.allows(self.login_limit):
            raise _refused("login", by_client, self.login_limit)
        if by_user.allows(self.login_limit):
            return
        if pair.estimate > 0 and not await known():
            raise _refused("login", by_user, self.login_limit)

    async def login_failed(self, client_ip: str, username: str) -> None:
        await self.counters.hit(self._login_names(client_ip, username))

    async def refresh_allowed(self, client_ip: str) -> None:
        """Refreshes share the login budget of the client address (not of any account)."""
        name = f"login:ip:{client_key(client_ip)}"
        count = (await self.counters.read([name]))[name]
        if not count.allows(self.login_limit):
            raise _refused("login", count, self.login_limit)

    async def refresh_failed(self, client_ip: str) -> None:
        await self.counters.hit([f"login:ip:{client_key(client_ip)}"])

    async def submit(self, user_id: str) -> None:
        name = f"submit:user:{user_id}"
        count = (await self.counters.hit([name]))[name]
        if count.estimate > self.submit_limit:
            await self.counters.unhit(name)  # a refused submission is not counted
            raise _refused("submission", count, self.submit_limit + 1)


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
