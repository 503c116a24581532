"""Errors as RFC 9457 problem details (`application/problem+json`) with stable codes.

Every error the API returns goes through here: QLP's own errors by their class, request
validation with the field named, HTTP errors from routing, and anything unexpected as a 500
that carries the request id (the traceback goes to the log, never to the client).
"""

from __future__ import annotations

import json
from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Scope, Send

from qlp.capsule.base import CapsuleError, CapsuleInputError
from qlp.errors import (
    AuthError,
    ConfigError,
    ConflictError,
    LimitExceededError,
    NotFoundError,
    PermissionDeniedError,
    QLPError,
    StoreError,
    TransitionError,
    UserInputError,
)

log = structlog.get_logger("qlp.api")

PROBLEM_JSON = "application/problem+json"

# HTTP status -> (stable code, title) for errors raised by routing and Starlette itself.
_HTTP_CODES: dict[int, tuple[str, str]] = {
    400: ("bad_request", "Bad request"),
    401: ("unauthorized", "Authentication required"),
    403: ("forbidden", "Not allowed"),
    404: ("not_found", "Not found"),
    405: ("method_not_allowed", "Method not allowed"),
    409: ("conflict", "Conflict"),
    413: ("payload_too_large", "Request body too large"),
    415: ("unsupported_media_type", "Unsupported media type"),
    422: ("validation_error", "Invalid request"),
    429: ("rate_limited", "Too many requests"),
    500: ("internal_error", "Internal server error"),
    503: ("unavailable", "Service unavailable"),
}


class ApiProblem(Exception):
    """An error a route raises with an explicit status and code."""

    def __init__(
        self, status: int, code: str, detail: str, *, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.headers = headers or {}


def problem(
    request: Request,
    status: int,
    code: str,
    detail: str,
    *,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    title = _HTTP_CODES.get(status, (code, code.replace("_", " ").capitalize()))[1]
    body: dict[str, Any] = {
        "type": f"urn:qlp:problem:{code}",
        "title": title,
        "status": status,
        "detail": detail,
        "instance": request.url.path,
        "code": code,
        "request_id": getattr(request.state, "request_id", None),
        **extra,
    }
    return JSONResponse(body, status_code=status, headers=headers, media_type=PROBLEM_JSON)


async def write_problem(scope: Scope, send: Send, status: int, code: str, detail: str) -> None:
    """A problem response sent from an ASGI middleware, before any route runs."""
    body = {
        "type": f"urn:qlp:problem:{code}",
        "title": _HTTP_CODES.get(status, (code, code))[1],
        "status": status,
        "detail": detail,
        "instance": scope.get("path", ""),
        "code": code,
        "request_id": (scope.get("state") or {}).get("request_id"),
    }
    data = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", PROBLEM_JSON.encode()),
                (b"content-length", str(len(data)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": data})


def classify(exc: QLPError) -> tuple[int, str, dict[str, str]]:
    """Status, code and headers for one of QLP's errors. Order matters: subclasses first."""
    if isinstance(exc, AuthError):
        return 401, "unauthorized", {"WWW-Authenticate": "Bearer"}
    if isinstance(exc, PermissionDeniedError):
        return 403, "forbidden", {}
    if isinstance(exc, NotFoundError):
        return 404, "not_found", {}
    if isinstance(exc, TransitionError):  # a refused state move, e.g. a lost race
        return 409, "invalid_state", {}
    if isinstance(exc, ConflictError):
        return 409, "conflict", {}
    if isinstance(exc, LimitExceededError):
        return 429, "rate_limited", {"Retry-After": str(exc.retry_after_s)}
    if isinstance(exc, ConfigError):  # the server's settings, not the caller's request
        return 503, "misconfigured", {}
    if isinstance(exc, CapsuleInputError | UserInputError):
        return 400, "bad_request", {}
    if isinstance(exc, StoreError):
        return 503, "unavailable", {}
    if isinstance(exc, CapsuleError):
        return 500, "capsule_error", {}
    return 500, "internal_error", {}


def _field(loc: tuple[Any, ...] | list[Any]) -> str:
    return ".".join(str(p) for p in loc)


def validation_detail(exc: RequestValidationError) -> tuple[str, list[dict[str, str]]]:
    """The one-line detail and the `errors` list of a 422 (HTTP answer or stream message)."""
    errors = [
        {"field": _field(e.get("loc", ())), "message": str(e.get("msg", "invalid"))}
        for e in exc.errors()
    ]
    shown = "; ".join(f"{e['field']}: {e['message']}" for e in errors[:5])
    return shown or "invalid request", errors


def install(app: FastAPI) -> None:
    async def on_qlp_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, QLPError)
        status, code, headers = classify(exc)
        if status >= 500:
            log.error("api.error", code=code, error=exc.message)
        extra: dict[str, Any] = {}
        if isinstance(exc, TransitionError) and exc.current is not None:
            extra["current_status"] = exc.current  # what the intent (or task) is now
        return problem(request, status, code, exc.message, headers=headers, **extra)

    async def on_api_problem(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ApiProblem)
        return problem(request, exc.status, exc.code, exc.detail, headers=exc.headers)

    async def on_validation(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        shown, errors = validation_detail(exc)
        return problem(request, 422, "validation_error", shown, errors=errors)

    async def on_http(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        code, title = _HTTP_CODES.get(exc.status_code, ("http_error", "Error"))
        detail = exc.detail if isinstance(exc.detail, str) else title
        return problem(request, exc.status_code, code, detail, headers=dict(exc.headers or {}))

    async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("api.unexpected", path=request.url.path)
        return problem(
            request,
            500,
            "internal_error",
            "the server failed on this request; the request id identifies it in the log",
        )

    app.add_exception_handler(QLPError, on_qlp_error)
    app.add_exception_handler(ApiProblem, on_api_problem)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(Exception, on_unexpected)
