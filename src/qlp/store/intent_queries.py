"""Read-side queries over intents and capsules for the service: pages with a keyset cursor,
filters, ownership and counts. Writes stay in repository.py and reviews.py."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, TypeVar

from sqlalchemy import Select, func, or_, select, tuple_

from qlp.domain.states import IntentStatus
from qlp.errors import UserInputError
from qlp.store import schema as t
from qlp.store.base import IntentRecord
from qlp.store.repository import Store, _intent
from qlp.store.reviews import CapsuleRecord, capsule_record

MAX_PAGE = 200
T = TypeVar("T")

# The option an intent records the job queue it was submitted to in (engine/jobs.py).
QUEUE_OPTION = "qlp.queue"


@dataclass(frozen=True)
class Page(Generic[T]):
    items: list[T]
    next_cursor: str | None


def encode_cursor(created_at: datetime, item_id: str) -> str:
    raw = json.dumps([created_at.isoformat(), item_id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """The position after which a page starts. Anything not made by `encode_cursor` is bad
    input, reported as such (never a server error)."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        at, item_id = json.loads(raw)
        when = datetime.fromisoformat(at)
        if not isinstance(item_id, str) or when.tzinfo is None:
            raise ValueError
    except (ValueError, TypeError, binascii.Error, UnicodeDecodeError):
        raise UserInputError("cursor: not a cursor returned by this API") from None
    return when, item_id


@dataclass(frozen=True)
class IntentFilter:
    owner: str | None = None  # None: every user's intents (admins, viewers)
    status: IntentStatus | None = None
    since: datetime | None = None
    until: datetime | None = None
    text: str | None = None  # case-insensitive substring of the intent text


def _escape_like(value: str) -> str:
    return value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


class IntentQueries:
    def __init__(self, store: Store) -> None:
        self.store = store

    async def ids_in_states(
        self, states: Iterable[IntentStatus], *, queue: str | None = None
    ) -> list[str]:
        """Ids of the intents in `states`, oldest first; with `queue`, only those submitted
        to that job queue (or before queues were recorded)."""
        query = (
            select(t.intents.c.id)
            .where(t.intents.c.status.in_([s.value for s in states]))
            .order_by(t.intents.c.created_at, t.intents.c.id)
        )
        if queue is not None:
            recorded = t.intents.c.options[QUEUE_OPTION].astext
            query = query.where(or_(recorded.is_(None), recorded == queue))
        async with self.store.autocommit.connect() as conn:
            return list((await conn.execute(query)).scalars())

    async def count_active(self, user_id: str, states: Iterable[IntentStatus]) -> int:
        query = select(func.count()).where(
            t.intents.c.user_id == user_id,
            t.intents.c.status.in_([s.value for s in states]),
        )
        async with self.store.autocommit.connect() as conn:
            return int((await conn.execute(query)).scalar_one())

    async def counts_by_status(self) -> dict[str, int]:
        query = select(t.intents.c.status, func.count()).group_by(t.intents.c.status)
        async with self.store.autocommit.connect() as conn:
            counts = {str(s): int(n) for s, n in await conn.execute(query)}
        return {s.value: counts.get(s.value, 0) for s in IntentStatus}

    async def intents(
        self, where: IntentFilter, *, cursor: str | None, limit: int
    ) -> Page[IntentRecord]:
        c = t.intents.c
        query: Select[Any] = select(t.intents)
        if where.owner is not None:
            query = query.where(c.user_id == where.owner)
        if where.status is not None:
            query = query.where(c.status == where.status.value)
        if where.since is not None:
            query = query.where(c.created_at >= where.since)
        if where.until is not None:
            query = query.where(c.created_at < where.until)
        if where.text:
            query = query.where(c.text.ilike(f"%{_escape_like(where.text)}%", escape="\\"))
        rows = await self._page(query, c.created_at, c.id, cursor, limit)
        items = [_intent(r) for r in rows[:limit]]
        return Page(items, self._next(rows, limit, lambda r: (r.created_at, r.id)))

    async def capsules(
        self, *, owner: str | None, cursor: str | None, limit: int, intent_id: str | None = None
    ) -> Page[CapsuleRecord]:
        c = t.capsules.c
        query: Select[Any] = select(t.capsules)
        if owner is not None:
            query = query.join(t.intents, t.intents.c.id == c.intent_id).where(
                t.intents.c.user_id == owner
            )
        if intent_id is not None:
            query = query.where(c.intent_id == intent_id)
        rows = await self._page(query, c.created_at, c.id, cursor, limit)
        items = [capsule_record(r) for r in rows[:limit]]
        return Page(items, self._next(rows, limit, lambda r: (r.created_at, r.id)))

    async def capsule(self, capsule_id: str) -> tuple[CapsuleRecord, str | None] | None:
        """A capsule and the user who owns its intent."""
        query = (
            select(t.capsules, t.intents.c.user_id.label("owner"))
            .join(t.intents, t.intents.c.id == t.capsules.c.intent_id)
            .where(t.capsules.c.id == capsule_id)
        )
        async with self.store.autocommit.connect() as conn:
            row = (await conn.execute(query)).one_or_none()
        return None if row is None else (capsule_record(row), row.owner)

    async def _page(
        self, query: Select[Any], at: Any, key: Any, cursor: str | None, limit: int
    ) -> list[Any]:
        if cursor is not None:
            when, after = decode_cursor(cursor)
            query = query.where(tuple_(at, key) < tuple_(when, after))
        query = query.order_by(at.desc(), key.desc()).limit(min(limit, MAX_PAGE) + 1)
        async with self.store.autocommit.connect() as conn:
            return list(await conn.execute(query))

    @staticmethod
    def _next(rows: list[Any], limit: int, position: Any) -> str | None:
        if len(rows) <= limit:
            return None
        return encode_cursor(*position(rows[limit - 1]))
