"""The LISTEN side of the events channel: a dedicated connection that hears, at commit, of
the events any process inserts (the NOTIFY is in the insert itself, statements.py).

LISTEN needs a session of its own that stays open: a direct connection to PostgreSQL, not
one through a pooler in transaction mode (PgBouncer's `pool_mode = transaction`, as in
Azure Database for PostgreSQL Flexible Server's built-in PgBouncer on port 6432), which
would hand the session to someone else between statements and lose the LISTEN.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import psycopg
from sqlalchemy.ext.asyncio import AsyncEngine

from qlp.store.statements import EVENTS_CHANNEL

# An idle connection is checked this often (a query), so a silently dead one is noticed.
PING_S = 30.0
PING_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Notice:
    """A commit added events `first`..`last` to an intent."""

    intent_id: str
    first: int
    last: int


def parse(payload: str) -> Notice | None:
    parts = payload.split(" ")
    if len(parts) != 3:
        return None
    try:
        return Notice(parts[0], int(parts[1]), int(parts[2]))
    except ValueError:
        return None


def conninfo(engine: AsyncEngine) -> str:
    """The engine's database as a libpq URL (psycopg's, without SQLAlchemy's driver name)."""
    return engine.url.set(drivername="postgresql").render_as_string(hide_password=False)


class Listener:
    """One LISTEN connection. `open` connects and listens; `notices` yields what it hears
    until the connection breaks (a psycopg.Error)."""

    def __init__(self, conn: psycopg.AsyncConnection[Any]) -> None:
        self._conn = conn

    @classmethod
    async def open(cls, dsn: str) -> Listener:
        conn = await psycopg.AsyncConnection.connect(
            dsn,
            autocommit=True,
            application_name="qlp-events-listener",
            # A peer that vanished without closing the socket is noticed by the OS too.
            keepalives=1,
            keepalives_idle=30,
            keepalives_interval=10,
            keepalives_count=3,
        )
        try:
            await conn.execute(f"LISTEN {EVENTS_CHANNEL}")
        except BaseException:
            await conn.close()
            raise
        return cls(conn)

    @property
    def backend_pid(self) -> int:
        return self._conn.info.backend_pid

    async def notices(self) -> AsyncIterator[Notice]:
        while True:  # `notifies` ends after PING_S in all, busy or not: then the ping
            async for n in self._conn.notifies(timeout=PING_S):
                notice = parse(n.payload)
                if notice is not None:
                    yield notice
            try:
                async with asyncio.timeout(PING_TIMEOUT_S):
                    await self._conn.execute("SELECT 1")
            except TimeoutError:
                raise psycopg.OperationalError("the listen connection stopped answering") from None

    async def close(self) -> None:
        await self._conn.close()
