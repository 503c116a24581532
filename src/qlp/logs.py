"""Structured logs: readable on a terminal, JSON in production, one line per event."""

from __future__ import annotations

import logging
import sys
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
