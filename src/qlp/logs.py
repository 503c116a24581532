"""Structured logs: readable on a terminal, JSON in production, one line per event."""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

from qlp.domain.events import Event

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}
# Payload fields that may be long (notes, texts) are shortened in log lines.
_MAX_FIELD = 200


_STATE = {"events": False}

# Field names whose values never reach a log line, whoever logs them.
# ("input_tokens" is a count and stays; "token", "access_token" are secrets.)
_SECRET_KEY = re.compile(r"password|secret|authorization|api_?key|cookie|(^|_)token$", re.I)
REDACTED = "[redacted]"


def _is_secret(key: str) -> bool:
    return _SECRET_KEY.search(key) is not None


def redact(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: REDACTED if _is_secret(str(k)) else redact(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact(v) for v in value]
    return value


def redact_secrets(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> dict[str, Any]:
    """structlog processor: secret-named fields (at any depth) are replaced."""
    return {
        k: REDACTED if _is_secret(k) and k != "event" else redact(v) for k, v in event_dict.items()
    }


def configure(level: str, fmt: str) -> None:
    # Events are logged at info; below that level the sink skips building their fields.
    _STATE["events"] = _LEVELS[level] <= logging.INFO
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,  # request_id, user_id of the request
            redact_secrets,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )


def _short(value: Any) -> Any:
    if isinstance(value, str) and len(value) > _MAX_FIELD:
        return value[:_MAX_FIELD] + "..."
    if isinstance(value, list) and len(value) > 20:
        return [*value[:20], f"... {len(value) - 20} more"]
    return value


def log_events(events: list[Event]) -> None:
    """Events carry ids and counts, never secrets (keys are not part of any payload)."""
    if not _STATE["events"]:
        return
    log = structlog.get_logger("qlp.events")
    for e in events:
        fields = {k: _short(v) for k, v in e.payload.items() if k != "tasks"}
        log.info(e.type, intent_id=e.intent_id, seq=e.seq, **fields)
