"""Refused requests counted into audit rows instead of one row each.

A flood of refused requests (429s, and anonymous requests refused before anything was
checked: no token, a malformed body) would otherwise grow the audit log by one row per
request. They are counted per (action, actor, client, status) and minute, and each count is
written as one ordinary audit row (hash-chained like the others) when its minute is over:
`details` holds `count`, `first_at`, `last_at` and the first request's id and path.

A crash loses the counts of the minute in progress (at most about a minute and a flush
interval of refusals; no request that changed anything is among them).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime

import structlog

from qlp.store.audit import AuditEntry, AuditStore

log = structlog.get_logger("qlp.api")

WINDOW_S = 60
# Distinct keys kept per window; past it, refusals are counted under one key per action and
# status with the client "*" (a flood from many addresses still costs a few rows a minute).
MAX_KEYS = 10_000


def aggregated(status: int, authenticated: bool, actor_named: bool) -> bool:
    """Whether a request's audit row is folded into a count: every 429, and every other
    refusal (4xx) of a request that named nobody (no principal, no username)."""
    return status == 429 or (400 <= status < 500 and not authenticated and not actor_named)


@dataclass
class _Count:
    count: int
    first_at: datetime
    last_at: datetime
    user_agent: str | None
    request_id: str | None
    resource: str | None


_Key = tuple[int, str, str, str, int, str]  # window, action, actor, outcome, status, client


class RefusalTally:
    """Counts refusals; `flush` writes them (the app calls it every few seconds, and with
    `everything` when it stops)."""

    def __init__(self, audit: AuditStore) -> None:
        self.audit = audit
        self._counts: dict[_Key, _Count] = {}

    def note(self, entry: AuditEntry, now: float | None = None) -> None:
        at = time.time() if now is None else now
        window = int(at // WINDOW_S)
        client = entry.client_ip or "unknown"
        key: _Key = (
            window,
            entry.action,
            entry.actor,
            entry.outcome,
            entry.status_code or 0,
            client,
        )
        when = datetime.fromtimestamp(at, UTC)
        found = self._counts.get(key)
        if found is None and len(self._counts) >= MAX_KEYS:
            key = (window, entry.action, "*", entry.outcome, entry.status_code or 0, "*")
            found = self._counts.get(key)
        if found is None:
            self._counts[key] = _Count(
                1, when, when, entry.user_agent, entry.request_id, entry.resource
            )
        else:
            found.count += 1
            found.last_at = when

    async def flush(self, *, everything: bool = False, now: float | None = None) -> int:
        """Writes the counts of finished windows (every count with `everything`); returns
        how many rows were written."""
        current = int((time.time() if now is None else now) // WINDOW_S)
        done = [k for k in self._counts if everything or k[0] < current]
        written = 0
        for key in sorted(done):
            counted = self._counts.pop(key)
            _, action, actor, outcome, status, client = key
            try:
                await self.audit.append(
                    AuditEntry(
                        actor=actor,
                        action=action,
                        outcome=outcome,
                        resource=counted.resource,
                        status_code=status or None,
                        client_ip=None if client in ("*", "unknown") else client,
                        user_agent=counted.user_agent,
                        request_id=counted.request_id,
                        details={
                            "count": counted.count,
                            "first_at": counted.first_at.isoformat(),
                            "last_at": counted.last_at.isoformat(),
                        },
                    )
                )
                written += 1
            except Exception:
                log.exception("audit.refusals_append_failed", action=action, count=counted.count)
        return written
