"""Rate-limit counters in PostgreSQL, so every API process counts against the same limits.

Each name (e.g. `login:ip:10.0.0.7`) has a hit count per fixed window of `WINDOW_S` seconds,
in the UNLOGGED table `rate_counters`. A limit reads the *sliding-window estimate*: the
current window's hits plus the previous window's, weighted by how much of it still lies
within the last `WINDOW_S` seconds. That is exact for evenly spread hits and never off by
more than the previous window's count; it needs two rows per name, whatever the rate.

Time is the database's clock (`clock_timestamp()`), so processes on hosts whose clocks differ
still agree on the windows. A hit is one upsert statement that also returns the counts, so
two processes hitting the same name at once both see each other's hit.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import text

from qlp.store.repository import Store

WINDOW_S = 60

_READ = text(
    "WITH e AS (SELECT extract(epoch FROM clock_timestamp())::float8 AS now_s) "
    "SELECT e.now_s, c.name, c.window_start, c.hits FROM e "
    "LEFT JOIN rate_counters c ON c.name = ANY(CAST(:names AS text[])) "
    "AND c.window_start >= floor(e.now_s / :w)::bigint - 1"
)

_HIT = text(
    "WITH e AS (SELECT extract(epoch FROM clock_timestamp())::float8 AS now_s), up AS ("
    " INSERT INTO rate_counters AS r (name, window_start, hits)"
    " SELECT n, floor(e.now_s / :w)::bigint, 1 FROM e, unnest(CAST(:names AS text[])) AS n"
    " ON CONFLICT (name, window_start) DO UPDATE SET hits = r.hits + 1"
    " RETURNING r.name, r.window_start, r.hits) "
    "SELECT e.now_s, up.name, up.window_start, up.hits, coalesce(p.hits, 0) AS previous "
    "FROM up CROSS JOIN e "
    "LEFT JOIN rate_counters p ON p.name = up.name AND p.window_start = up.window_start - 1"
)

_UNHIT = text(
    "WITH e AS (SELECT extract(epoch FROM clock_timestamp())::float8 AS now_s) "
    "UPDATE rate_counters SET hits = hits - 1 FROM e "
    "WHERE name = :name AND window_start = floor(e.now_s / :w)::bigint AND hits > 0"
)

_PRUNE = text(
    "WITH e AS (SELECT extract(epoch FROM clock_timestamp())::float8 AS now_s) "
    "DELETE FROM rate_counters USING e WHERE window_start < floor(e.now_s / :w)::bigint - 1"
)


@dataclass(frozen=True)
class Count:
    """A name's hits in the current and the previous window, and how far (0..1) the
    current window has run."""

    current: int
    previous: int
    elapsed: float
    window_s: int = WINDOW_S

    @property
    def estimate(self) -> float:
        return self.current + self.previous * (1.0 - self.elapsed)

    def allows(self, limit: int) -> bool:
        """Whether one more hit stays within `limit`."""
        return self.estimate + 1 <= limit

    def wait_s(self, limit: int) -> int:
        """Whole seconds (at least 1) until one more hit would be allowed, if nothing else
        is hit meanwhile."""
        if self.allows(limit):
            return 1
        room = limit - 1  # the estimate that allows one more hit
        if self.previous and self.current <= room:
            # Within this window, as the previous window's share fades.
            fade = 1.0 - self.elapsed - (room - self.current) / self.previous
            return max(1, math.ceil(max(0.0, fade) * self.window_s))
        # In the next window, as this window's hits fade in their turn.
        share = 1.0 - room / self.current if self.current else 0.0
        return max(1, math.ceil((1.0 - self.elapsed + max(0.0, share)) * self.window_s))


class RateCounters:
    def __init__(self, store: Store, window_s: int = WINDOW_S) -> None:
        self.store = store
        self.window_s = window_s

    def _counts(self, rows: Sequence[object], names: Sequence[str]) -> dict[str, Count]:
        now = None
        found: dict[str, dict[int, int]] = {}
        for row in rows:
            now = float(row.now_s)  # type: ignore[attr-defined]
            name = row.name  # type: ignore[attr-defined]
            if name is not None:
                per = found.setdefault(name, {})
                per[int(row.window_start)] = int(row.hits)  # type: ignore[attr-defined]
                previous = getattr(row, "previous", None)
                if previous is not None:
                    per[int(row.window_start) - 1] = int(previous)  # type: ignore[attr-defined]
        assert now is not None
        current = math.floor(now / self.window_s)
        elapsed = now / self.window_s - current
        return {
            name: Count(
                found.get(name, {}).get(current, 0),
                found.get(name, {}).get(current - 1, 0),
                elapsed,
                self.window_s,
            )
            for name in names
        }

    async def read(self, names: Sequence[str]) -> dict[str, Count]:
        async with self.store.autocommit.connect() as conn:
            rows = (await conn.execute(_READ, {"names": list(names), "w": self.window_s})).all()
        return self._counts(rows, names)

    async def hit(self, names: Sequence[str]) -> dict[str, Count]:
        """One more hit on each name; returns the counts including it."""
        unique = sorted(set(names))  # one upsert per row, in one order (no deadlock)
        async with self.store.autocommit.connect() as conn:
            rows = (await conn.execute(_HIT, {"names": unique, "w": self.window_s})).all()
        return self._counts(rows, names)

    async def unhit(self, name: str) -> None:
        """Takes back a hit of the current window (a refused attempt is not counted)."""
        async with self.store.autocommit.connect() as conn:
            await conn.execute(_UNHIT, {"name": name, "w": self.window_s})

    async def prune(self) -> int:
        """Removes windows no estimate reads any more; returns how many."""
        async with self.store.autocommit.connect() as conn:
            result = await conn.execute(_PRUNE, {"w": self.window_s})
        return int(result.rowcount or 0)
