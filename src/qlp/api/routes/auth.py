"""/auth: log in, refresh, log out, who am I, API keys."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response

from qlp.api.context import Service, service
from qlp.api.inputs import Text
from qlp.api.limits import client_key
from qlp.api.schemas import (
    ApiKeyCreatedOut,
    ApiKeyIn,
    ApiKeyOut,
    LoginIn,
    MeOut,
    RefreshIn,
    TokenOut,
)
from qlp.api.security import caller
from qlp.auth.base import Principal, TokenPair
from qlp.errors import AuthError

router = APIRouter(prefix="/auth", tags=["auth"])

# A client the account logged in (or refreshed) from within this many days is "known": it is
# not held to a lockout other clients caused on that username (docs/SECURITY.md).
KNOWN_CLIENT_DAYS = 30

Caller = Annotated[Principal, Depends(caller)]
Svc = Annotated[Service, Depends(service)]


def client_ip(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def _tokens(pair: TokenPair) -> TokenOut:
    return TokenOut(
        access_token=pair.access_token,
        refresh_token=pair.refresh_token,
        token_type=pair.token_type,
        expires_in=pair.expires_in,
    )


@router.post("/login", name="auth.login", response_model=TokenOut)
async def login(body: LoginIn, request: Request, svc: Svc) -> TokenOut:
    # The audit row names who tried, whether or not it worked.
    request.state.actor = body.username.strip().lower()[:64]
    address = client_ip(request)

    async def known() -> bool:
        recent = await svc.auth.recent_addresses(body.username, KNOWN_CLIENT_DAYS)
        return client_key(address) in {client_key(a) for a in recent}

    await svc.limits.login_allowed(address, body.username, known)
    try:
        principal, pair = await svc.auth.login(
            body.username,
            body.password,
            client_ip=address,
            user_agent=request.headers.get("user-agent"),
        )
    except AuthError:
        await svc.limits.login_failed(address, body.username)
        raise
    request.state.principal = principal
    return _tokens(pair)


@router.post("/refresh", name="auth.refresh", response_model=TokenOut)
async def refresh(body: RefreshIn, request: Request, svc: Svc) -> TokenOut:
    address = client_ip(request)
    await svc.limits.refresh_allowed(address)
    try:
        pair = await svc.auth.refresh(
            body.refresh_token,
            client_ip=address,
            user_agent=request.headers.get("user-agent"),
        )
    except AuthError:
        await svc.limits.refresh_failed(address)
        raise
    return _tokens(pair)


@router.post("/logout", name="auth.logout", status_code=204, response_class=Response)
async def logout(principal: Caller, svc: Svc) -> Response:
    await svc.auth.logout(principal)
    return Response(status_code=204)


@router.get("/me", name="auth.me", response_model=MeOut)
async def me(principal: Caller) -> MeOut:
    return MeOut(
        id=principal.user_id,
        username=principal.username,
        role=principal.role.value,
        via="api_key" if principal.api_key_id else "token",
    )


@router.post("/api-keys", name="apikey.create", status_code=201, response_model=ApiKeyCreatedOut)
async def create_key(body: ApiKeyIn, principal: Caller, svc: Svc) -> ApiKeyCreatedOut:
    record, key = await svc.auth.create_api_key(principal, body.name)
    return ApiKeyCreatedOut(**ApiKeyOut.model_validate(record).model_dump(), key=key)


@router.get("/api-keys", name="apikey.list", response_model=list[ApiKeyOut])
async def list_keys(principal: Caller, svc: Svc) -> list[ApiKeyOut]:
    return [ApiKeyOut.model_validate(k) for k in await svc.auth.list_api_keys(principal)]


@router.delete("/api-keys/{key_id}", name="apikey.revoke", status_code=204, response_class=Response)
async def revoke_key(key_id: Text, request: Request, principal: Caller, svc: Svc) -> Response:
    await svc.auth.revoke_api_key(principal, key_id[:64])
    request.state.audit = {"key_id": key_id[:64]}
    return Response(status_code=204)
