"""Read-side queries over intents and capsules for the service: pages with a keyset cursor,
filters, ownership and counts. Writes stay in repository.py and reviews.py."""

from __future__ import annotations

import base64
import binascii
import functools
import json
from collections.abc import Iterable
from dataclasses import dataclass, fields, replace
from datetime import datetime
from typing import Any, Generic, TypeVar

from sqlalchemy import Select, func, or_, select, tuple_

from qlp.domain.states import IntentStatus
from qlp.errors import UserInputError
from qlp.store import schema as t
from qlp.store.base import from_row
from qlp.store.repository import Store
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
class IntentListing:
    """An intent as a list shows it: without its plan and workspace, which a page of them
    never shows and which are the largest columns to fetch and decode."""

    id: str
    text: str
    options: dict[str, Any]
    user_id: str | None
    status: IntentStatus
    error: str | None
    created_at: datetime
    finished_at: datetime | None
    updated_at: datetime
    input_tokens: int
    output_tokens: int
    cost_usd: float
    unpriced_calls: int

    @property
    def cost_known(self) -> bool:
        return self.unpriced_calls == 0


_LISTED = [f.name for f in fields(IntentListing)]


def _listing(r: Any) -> IntentListing:
    listed = from_row(IntentListing, r)
    return replace(listed, status=IntentStatus(r.status), cost_usd=float(r.cost_usd))


# The list of intents is the API's busiest read: plain SQL run with `exec_driver_sql`, as
# the hot-path writes are (statements.py), since building and compiling the statement on
# every request cost more than running it. One text per combination of filters, made from
# constant fragments; every value is a bound parameter.
_FILTERS = ("owner", "status", "since", "until", "text")
_CONDITIONS = {
    "owner": "user_id = %(owner)s",
    "status": "status = %(status)s",
    "since": "created_at >= %(since)s",
    "until": "created_at < %(until)s",
    "text": "\"text\" ILIKE %(text)s ESCAPE '\\'",
    "cursor": "(created_at, id) < (%(after_at)s, %(after_id)s)",
}


@functools.cache
def _listing_sql(*shape: bool) -> str:
    used = [_CONDITIONS[k] for k, on in zip((*_FILTERS, "cursor"), shape, strict=True) if on]
    columns = ", ".join(f'"{name}"' for name in _LISTED)
    return (
        f"SELECT {columns} FROM intents WHERE {' AND '.join(used) or 'true'} "  # noqa: S608
        "ORDER BY created_at DESC, id DESC LIMIT %(limit)s"
    )


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
    ) -> Page[IntentListing]:
        params: dict[str, Any] = {
            "owner": where.owner,
            "status": where.status.value if where.status is not None else None,
            "since": where.since,
            "until": where.until,
            "text": f"%{_escape_like(where.text)}%" if where.text else None,
            "limit": min(limit, MAX_PAGE) + 1,
        }
        if cursor is not None:
            params["after_at"], params["after_id"] = decode_cursor(cursor)
        shape = [params[k] is not None for k in _FILTERS]
        async with self.store.autocommit.connect() as conn:
            sql = _listing_sql(*shape, cursor is not None)
            rows = list(await conn.exec_driver_sql(sql, params))
        items = [_listing(r) for r in rows[:limit]]
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
