"""Text the database cannot store (NUL, unpaired surrogates) is bad input, refused at the
door with 400/422 instead of failing deep in a query with a 500. So is a number the database
cannot store: an event sequence number beyond a bigint.
"""

from __future__ import annotations

from typing import Annotated
from urllib.parse import unquote_to_bytes

from annotated_types import Ge, Le
from fastapi.exceptions import RequestValidationError
from pydantic import AfterValidator, TypeAdapter, ValidationError
from starlette.types import ASGIApp, Receive, Scope, Send

from qlp.api.problems import write_problem


def storable(value: str) -> str:
    if "\x00" in value:
        raise ValueError("NUL characters are not allowed")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("the text is not valid Unicode (unpaired surrogate)") from None
    return value


# A str field or parameter whose value can go into PostgreSQL as it is.
Text = Annotated[str, AfterValidator(storable)]

# An event sequence number a client sends (`after`): 0 or more, and within a bigint.
MAX_SEQ = 2**62
EventSeq = Annotated[int, Ge(0), Le(MAX_SEQ)]
_EVENT_SEQ: TypeAdapter[int] = TypeAdapter(EventSeq)


def query_event_seq(name: str, raw: str | None, default: int = 0) -> int:
    """A query parameter read by hand (the WebSocket stream's `after`) checked with the same
    rules, and failing with the same RequestValidationError, as a REST route's EventSeq."""
    if raw is None:
        return default
    try:
        return _EVENT_SEQ.validate_python(raw)
    except ValidationError as exc:
        errors = [{**e, "loc": ("query", name, *e["loc"])} for e in exc.errors()]
        raise RequestValidationError(errors) from None


def _clean(raw: bytes) -> bool:
    decoded = unquote_to_bytes(raw)
    if b"\x00" in decoded:
        return False
    try:
        decoded.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


class RefuseUnstorableUrls:
    """Paths and query strings with an encoded NUL or invalid UTF-8 are answered 400."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            path = scope.get("raw_path") or scope["path"].encode("utf-8", "surrogateescape")
            if not (_clean(path) and _clean(scope.get("query_string", b""))):
                if scope["type"] == "http":
                    await write_problem(
                        scope,
                        send,
                        400,
                        "bad_request",
                        "the URL holds a NUL character or invalid UTF-8",
                    )
                    return
                await send({"type": "websocket.close", "code": 4400})
                return
        await self.app(scope, receive, send)
