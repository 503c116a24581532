"""Who is calling and what they may see. Routes declare a dependency (`caller`, `writer`,
`admin`) and ask `can_read` / `can_act` about a resource's owner; nothing else decides.

Rules (docs/API.md): admins see and act on everything; members see and act on their own
intents and capsules only; viewers read every intent and capsule and change nothing.
Anything a member may not see is answered 404, like something that does not exist, so ids
cannot be probed.
"""

from __future__ import annotations

from typing import Annotated

import structlog
from fastapi import Depends, Request, WebSocket

from qlp.api.context import Service, service
from qlp.auth.base import Principal, Role
from qlp.errors import AuthError, NotFoundError, PermissionDeniedError

_SCHEME = "bearer "


def bearer(header: str | None) -> str | None:
    if header and header[: len(_SCHEME)].lower() == _SCHEME:
        return header[len(_SCHEME) :].strip() or None
    return None


async def _authenticate(svc: Service, credential: str | None, request_state: object) -> Principal:
    if not credential:
        raise AuthError("authentication required: send Authorization: Bearer <token or API key>")
    principal = await svc.auth.authenticate(credential)
    # The request middleware reads these for the audit row and the access log.
    request_state.principal = principal  # type: ignore[attr-defined]
    structlog.contextvars.bind_contextvars(user_id=principal.user_id)
    return principal


async def caller(request: Request, svc: Annotated[Service, Depends(service)]) -> Principal:
    return await _authenticate(svc, bearer(request.headers.get("authorization")), request.state)


async def writer(principal: Annotated[Principal, Depends(caller)]) -> Principal:
    if not principal.can_write:
        raise PermissionDeniedError(f"the {principal.role.value} role is read-only")
    return principal


async def admin(principal: Annotated[Principal, Depends(caller)]) -> Principal:
    if not principal.is_admin:
        raise PermissionDeniedError("only admins may do this")
    return principal


async def ws_caller(websocket: WebSocket, svc: Service) -> Principal:
    """A WebSocket authenticates like a request: the Authorization header, or (browsers cannot
    set headers on a WebSocket) the `access_token` query parameter."""
    credential = bearer(websocket.headers.get("authorization")) or websocket.query_params.get(
        "access_token"
    )
    return await _authenticate(svc, credential, websocket.state)


def owner_filter(principal: Principal) -> str | None:
    """The owner to restrict listings to (None: everyone's)."""
    return None if principal.is_admin or principal.role is Role.VIEWER else principal.user_id


def can_read(principal: Principal, owner: str | None) -> bool:
    return owner_filter(principal) is None or owner == principal.user_id


def can_act(principal: Principal, owner: str | None) -> bool:
    return principal.is_admin or (principal.can_write and owner == principal.user_id)


def require_read(principal: Principal, owner: str | None, what: str) -> None:
    if not can_read(principal, owner):
        raise NotFoundError(f"no {what}")


def require_act(principal: Principal, owner: str | None, what: str) -> None:
    require_read(principal, owner, what)
    if not can_act(principal, owner):
        raise PermissionDeniedError(f"you may read {what} but not change it")
