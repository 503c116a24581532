"""The audit log: who did what, when, from where, with what outcome; hash-chained.

Each row's `hash` is the sha256 of a canonical JSON of its content and the previous row's
hash (`prev_hash`; the first row's is 64 zeros). Rows are numbered 1, 2, 3... without holes
(by the store, under a transaction-level advisory lock that also serialises appends from
several processes into one chain). The chain's end (last seq and hash) is kept in the
one-row table `audit_head`, updated in the same transaction as each append.

What `verify()` detects: a changed row (its hash no longer matches its content), a row
changed together with its hash (the next row's prev_hash no longer matches), deleted rows
(a hole in the numbering), rows deleted from the end (the head names a later row or another
hash), rows added outside the store (after the head), and a missing head.

What it cannot detect: someone with full write access to the database can recompute every
hash from the point they change onwards and rewrite the head to match; the chain then
verifies. The defence is to keep a copy of the head where that person cannot write, e.g.
export `head()` (seq and hash) periodically to write-once storage or another system's log,
and compare: a rewritten chain no longer reaches the exported hash at that seq.
"""

from __future__ import annotations

import builtins
import hashlib
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Row, insert, select, text, update

from qlp.errors import UserInputError
from qlp.store import schema as t
from qlp.store.base import from_row
from qlp.store.repository import Store, utcnow

GENESIS_HASH = "0" * 64
OUTCOMES = ("success", "failure", "denied")
# Any constant works; it only has to be the same for every QLP process (and differ from the
# migration lock in db.py).
_AUDIT_LOCK_KEY = 0x51_4C_50_41


@dataclass(frozen=True)
class AuditEntry:
    """What happened, as the caller describes it."""

    actor: str  # user id, username, or "anonymous"
    action: str  # e.g. "auth.login", "intent.create", "review.approve"
    outcome: str  # success | failure | denied
    resource: str | None = None
    status_code: int | None = None
    client_ip: str | None = None
    user_agent: str | None = None
    request_id: str | None = None
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class AuditRecord:
    seq: int
    at: datetime
    actor: str
    action: str
    resource: str | None
    outcome: str
    status_code: int | None
    client_ip: str | None
    user_agent: str | None
    request_id: str | None
    details: dict[str, Any]
    prev_hash: str
    hash: str


@dataclass(frozen=True)
class AuditHead:
    last_seq: int
    hash: str
    updated_at: datetime


@dataclass(frozen=True)
class AuditVerification:
    ok: bool
    rows: int
    problems: list[str]


def _scrub(value: Any) -> Any:
    """PostgreSQL text and JSONB cannot hold NUL characters; an audit write must not fail
    because a request carried one."""
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, dict):
        return {_scrub(str(k)): _scrub(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_scrub(v) for v in value]
    return value


def _plain_details(details: dict[str, Any]) -> dict[str, Any]:
    """The details exactly as JSONB will give them back (tuples become lists, other objects
    their str), so the hash computed now matches the one recomputed from the stored row."""
    try:
        text_ = json.dumps(details, default=str, allow_nan=False)
    except ValueError:
        raise UserInputError("audit details must be JSON without NaN or infinity") from None
    plain: dict[str, Any] = _scrub(json.loads(text_))
    return plain


def _iso(at: datetime) -> str:
    return at.astimezone(UTC).isoformat(timespec="microseconds")


def row_hash(
    *,
    seq: int,
    at: datetime,
    actor: str,
    action: str,
    resource: str | None,
    outcome: str,
    status_code: int | None,
    client_ip: str | None,
    user_agent: str | None,
    request_id: str | None,
    details: dict[str, Any],
    prev_hash: str,
) -> str:
    canonical = json.dumps(
        {
            "seq": seq,
            "at": _iso(at),
            "actor": actor,
            "action": action,
            "resource": resource,
            "outcome": outcome,
            "status_code": status_code,
            "client_ip": client_ip,
            "user_agent": user_agent,
            "request_id": request_id,
            "details": details,
            "prev_hash": prev_hash,
        },
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _record(r: Row[Any]) -> AuditRecord:
    return from_row(AuditRecord, r)


def _content_hash(r: AuditRecord) -> str:
    return row_hash(
        seq=r.seq,
        at=r.at,
        actor=r.actor,
        action=r.action,
        resource=r.resource,
        outcome=r.outcome,
        status_code=r.status_code,
        client_ip=r.client_ip,
        user_agent=r.user_agent,
        request_id=r.request_id,
        details=r.details,
        prev_hash=r.prev_hash,
    )


def _opt(value: str | None) -> str | None:
    return _scrub(value) if value is not None else None


def _span(first: int, last: int) -> str:
    return f"row {first} is" if first == last else f"rows {first} to {last} are"


class AuditStore:
    def __init__(self, store: Store) -> None:
        self.store = store

    async def append(self, entry: AuditEntry) -> AuditRecord:
        if entry.outcome not in OUTCOMES:
            raise UserInputError(
                f"audit outcome {entry.outcome!r} is not one of {', '.join(OUTCOMES)}"
            )
        details = _plain_details(entry.details)
        async with self.store.engine.begin() as conn:
            await conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _AUDIT_LOCK_KEY})
            head = (await conn.execute(select(t.audit_head).where(t.audit_head.c.id == 1))).first()
            last_seq, prev_hash = (head.last_seq, head.hash) if head else (0, GENESIS_HASH)
            # Taken under the lock, so times never go backwards along the chain.
            values: dict[str, Any] = {
                "seq": last_seq + 1,
                "at": utcnow(),
                "actor": _scrub(entry.actor),
                "action": _scrub(entry.action),
                "resource": _opt(entry.resource),
                "outcome": entry.outcome,
                "status_code": entry.status_code,
                "client_ip": _opt(entry.client_ip),
                "user_agent": _opt(entry.user_agent),
                "request_id": _opt(entry.request_id),
                "details": details,
                "prev_hash": prev_hash,
            }
            values["hash"] = row_hash(**values)
            await conn.execute(insert(t.audit_log).values(**values))
            head_values = {
                "last_seq": values["seq"],
                "hash": values["hash"],
                "updated_at": values["at"],
            }
            if head is None:
                await conn.execute(insert(t.audit_head).values(id=1, **head_values))
            else:
                await conn.execute(
                    update(t.audit_head).where(t.audit_head.c.id == 1).values(**head_values)
                )
        return AuditRecord(**values)

    async def list(
        self,
        after_seq: int = 0,
        limit: int = 100,
        actor: str | None = None,
        action: str | None = None,
    ) -> builtins.list[AuditRecord]:
        """Rows after `after_seq`, oldest first (page on with the last seq seen)."""
        query = (
            select(t.audit_log)
            .where(t.audit_log.c.seq > after_seq)
            .order_by(t.audit_log.c.seq)
            .limit(max(1, min(limit, 10_000)))
        )
        if actor is not None:
            query = query.where(t.audit_log.c.actor == actor)
        if action is not None:
            query = query.where(t.audit_log.c.action == action)
        async with self.store.autocommit.connect() as conn:
            return [_record(r) for r in await conn.execute(query)]

    async def latest(
        self, limit: int = 100, actor: str | None = None, action: str | None = None
    ) -> builtins.list[AuditRecord]:
        """The newest `limit` rows (of this actor and action, when given), oldest first."""
        query = select(t.audit_log).order_by(t.audit_log.c.seq.desc()).limit(max(1, limit))
        if actor is not None:
            query = query.where(t.audit_log.c.actor == actor)
        if action is not None:
            query = query.where(t.audit_log.c.action == action)
        async with self.store.autocommit.connect() as conn:
            rows = [_record(r) for r in await conn.execute(query)]
        return rows[::-1]

    async def head(self) -> AuditHead | None:
        """The chain's end; export it elsewhere to detect a rewritten chain (module doc)."""
        async with self.store.autocommit.connect() as conn:
            row = (await conn.execute(select(t.audit_head).where(t.audit_head.c.id == 1))).first()
        return AuditHead(row.last_seq, row.hash, row.updated_at) if row is not None else None

    async def verify(self) -> AuditVerification:
        """Walk the whole chain in one snapshot and name every problem by seq."""
        problems: builtins.list[str] = []
        count = 0
        expected_seq = 1
        prev_hash = GENESIS_HASH
        last: AuditRecord | None = None
        async with self.store.engine.connect() as conn:
            await conn.execution_options(isolation_level="REPEATABLE READ")
            async with conn.begin():
                head = (
                    await conn.execute(select(t.audit_head).where(t.audit_head.c.id == 1))
                ).first()
                result = await conn.stream(select(t.audit_log).order_by(t.audit_log.c.seq))
                async for raw in result:
                    r = _record(raw)
                    count += 1
                    if r.seq > expected_seq:
                        problems.append(f"{_span(expected_seq, r.seq - 1)} missing (deleted)")
                    elif r.prev_hash != prev_hash:
                        problems.append(
                            f"row {r.seq} does not follow row {r.seq - 1} (prev_hash "
                            f"mismatch): row {r.seq - 1} was changed or replaced"
                            if r.seq > 1
                            else "row 1 does not start the chain (prev_hash is not zeros)"
                        )
                    if _content_hash(r) != r.hash:
                        problems.append(f"row {r.seq} was changed (its hash does not match)")
                    expected_seq = r.seq + 1
                    prev_hash = r.hash
                    last = r
        last_seq = last.seq if last else 0
        if head is None:
            problems.append("the audit head (last seq and hash) is missing (deleted)")
        elif head.last_seq > last_seq:
            problems.append(
                f"{_span(last_seq + 1, head.last_seq)} missing (deleted from the end; "
                f"the head records row {head.last_seq})"
            )
        elif head.last_seq < last_seq:
            problems.append(
                f"rows after {head.last_seq} were not appended through QLP (the head "
                f"records row {head.last_seq}, the log ends at row {last_seq})"
            )
        elif head.hash != prev_hash:
            problems.append(
                f"row {last_seq} does not match the recorded chain head (changed or replaced)"
            )
        return AuditVerification(ok=not problems, rows=count, problems=problems)
