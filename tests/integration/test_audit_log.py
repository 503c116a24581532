"""The hash-chained audit log on the real database: appends chain, verify finds every kind
of tampering done with raw SQL, and concurrent writers still form one chain."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
from sqlalchemy import text

from qlp.errors import UserInputError
from qlp.store.audit import GENESIS_HASH, AuditEntry, AuditStore, row_hash
from qlp.store.db import connect
from qlp.store.repository import Store


@pytest.fixture
async def store(db_url: str) -> AsyncIterator[Store]:
    """A store over an empty audit log (tests here tamper with it on purpose)."""
    engine = await connect(db_url)
    async with engine.begin() as conn:
        await conn.execute(text("DELETE FROM audit_log"))
        await conn.execute(
            text("UPDATE audit_head SET last_seq = 0, hash = :h WHERE id = 1"), {"h": GENESIS_HASH}
        )
    try:
        yield Store(engine)
    finally:
        await engine.dispose()


async def _sql(store: Store, sql: str, **params: object) -> None:
    async with store.engine.begin() as conn:
        await conn.execute(text(sql), params)


async def _fill(audit: AuditStore, n: int) -> None:
    for i in range(n):
        await audit.append(
            AuditEntry(
                actor=f"QLU-{i % 3}",
                action="intent.create" if i % 2 else "auth.login",
                outcome="success",
                resource=f"QLI-{i}",
                status_code=201,
                client_ip="127.0.0.1",
                user_agent="pytest",
                request_id=f"req-{i}",
                details={"n": i, "nested": {"ok": True, "list": [1, 2.5, "x"]}},
            )
        )


async def test_appends_form_a_chain_that_verifies(store: Store) -> None:
    audit = AuditStore(store)
    assert (await audit.verify()).ok
    first = await audit.append(AuditEntry(actor="anonymous", action="auth.login", outcome="denied"))
    second = await audit.append(
        AuditEntry(
            actor="QLU-1",
            action="review.approve",
            outcome="success",
            resource="QLI-1",
            details={"reason": "fine", "tuple": (1, 2), "when": datetime(2026, 1, 1, tzinfo=UTC)},
        )
    )
    assert (first.seq, second.seq) == (1, 2)
    assert first.prev_hash == GENESIS_HASH
    assert second.prev_hash == first.hash
    assert second.details == {
        "reason": "fine",
        "tuple": [1, 2],
        "when": "2026-01-01 00:00:00+00:00",
    }
    rows = await audit.list()
    assert rows == [first, second]  # what append returned is exactly what is stored
    assert second.hash == row_hash(
        seq=2,
        at=rows[1].at,
        actor="QLU-1",
        action="review.approve",
        resource="QLI-1",
        outcome="success",
        status_code=None,
        client_ip=None,
        user_agent=None,
        request_id=None,
        details=second.details,
        prev_hash=first.hash,
    )
    result = await audit.verify()
    assert result.ok, result.problems
    assert result.rows == 2
    head = await audit.head()
    assert head is not None
    assert (head.last_seq, head.hash) == (2, second.hash)


async def test_list_filters_and_pages(store: Store) -> None:
    audit = AuditStore(store)
    await _fill(audit, 10)
    assert [r.seq for r in await audit.list(limit=3)] == [1, 2, 3]
    assert [r.seq for r in await audit.list(after_seq=8)] == [9, 10]
    assert {r.action for r in await audit.list(action="auth.login")} == {"auth.login"}
    assert [r.seq for r in await audit.list(actor="QLU-1")] == [2, 5, 8]
    assert [r.seq for r in await audit.latest(2)] == [9, 10]


async def test_bad_outcome_and_nan_are_refused_before_writing(store: Store) -> None:
    audit = AuditStore(store)
    with pytest.raises(UserInputError, match="outcome"):
        await audit.append(AuditEntry(actor="a", action="x", outcome="maybe"))
    with pytest.raises(UserInputError, match="NaN"):
        await audit.append(
            AuditEntry(actor="a", action="x", outcome="success", details={"v": float("nan")})
        )
    assert await audit.list() == []


async def test_nul_characters_are_stored_replaced_and_still_verify(store: Store) -> None:
    audit = AuditStore(store)
    row = await audit.append(
        AuditEntry(
            actor="evil\x00user",
            action="auth.login",
            outcome="failure",
            user_agent="ua\x00",
            details={"k\x00": "v\x00"},
        )
    )
    assert row.actor == "evil\ufffduser"
    assert row.details == {"k\ufffd": "v\ufffd"}
    assert (await audit.verify()).ok


@pytest.mark.parametrize(
    "change",
    [
        "UPDATE audit_log SET actor = 'someone-else' WHERE seq = 3",
        "UPDATE audit_log SET outcome = 'denied' WHERE seq = 3",
        "UPDATE audit_log SET details = '{\"n\": 99}' WHERE seq = 3",
        "UPDATE audit_log SET at = at + interval '1 microsecond' WHERE seq = 3",
        "UPDATE audit_log SET status_code = NULL WHERE seq = 3",
        "UPDATE audit_log SET hash = repeat('a', 64) WHERE seq = 3",
    ],
)
async def test_a_changed_row_is_detected_and_named(store: Store, change: str) -> None:
    audit = AuditStore(store)
    await _fill(audit, 5)
    await _sql(store, change)
    result = await audit.verify()
    assert not result.ok
    assert result.rows == 5
    assert any("row 3 " in p for p in result.problems), result.problems


async def test_a_row_rewritten_with_a_fresh_hash_breaks_the_link_to_the_next(
    store: Store,
) -> None:
    audit = AuditStore(store)
    await _fill(audit, 5)
    [row] = await audit.list(after_seq=2, limit=1)
    forged = row_hash(
        seq=3,
        at=row.at,
        actor="someone-else",
        action=row.action,
        resource=row.resource,
        outcome=row.outcome,
        status_code=row.status_code,
        client_ip=row.client_ip,
        user_agent=row.user_agent,
        request_id=row.request_id,
        details=row.details,
        prev_hash=row.prev_hash,
    )
    await _sql(
        store, "UPDATE audit_log SET actor = 'someone-else', hash = :h WHERE seq = 3", h=forged
    )
    result = await audit.verify()
    assert not result.ok
    assert any("row 4 does not follow row 3" in p for p in result.problems), result.problems


async def test_a_deleted_middle_row_is_detected(store: Store) -> None:
    audit = AuditStore(store)
    await _fill(audit, 6)
    await _sql(store, "DELETE FROM audit_log WHERE seq IN (3, 4)")
    result = await audit.verify()
    assert not result.ok
    assert result.rows == 4
    assert result.problems == ["rows 3 to 4 are missing (deleted)"]


async def test_a_deleted_last_row_is_detected(store: Store) -> None:
    audit = AuditStore(store)
    await _fill(audit, 4)
    await _sql(store, "DELETE FROM audit_log WHERE seq = 4")
    result = await audit.verify()
    assert not result.ok
    assert any("row 4 is missing" in p for p in result.problems), result.problems


async def test_deleted_first_row_and_missing_head_are_detected(store: Store) -> None:
    audit = AuditStore(store)
    await _fill(audit, 3)
    await _sql(store, "DELETE FROM audit_log WHERE seq = 1")
    result = await audit.verify()
    assert result.problems == ["row 1 is missing (deleted)"]
    await _sql(store, "DELETE FROM audit_head")
    result = await audit.verify()
    assert any("head" in p and "missing" in p for p in result.problems), result.problems


async def test_wiping_everything_but_the_head_is_detected(store: Store) -> None:
    audit = AuditStore(store)
    await _fill(audit, 3)
    await _sql(store, "DELETE FROM audit_log")
    result = await audit.verify()
    assert not result.ok
    assert result.problems[0].startswith("rows 1 to 3 are missing")


async def test_a_row_added_behind_the_stores_back_is_detected(store: Store) -> None:
    audit = AuditStore(store)
    await _fill(audit, 2)
    [last] = await audit.list(after_seq=1)
    at = datetime.now(UTC)
    values = {
        "seq": 3,
        "at": at,
        "actor": "intruder",
        "action": "auth.login",
        "resource": None,
        "outcome": "success",
        "status_code": None,
        "client_ip": None,
        "user_agent": None,
        "request_id": None,
        "details": {},
        "prev_hash": last.hash,
    }
    h = row_hash(**values)  # type: ignore[arg-type]
    await _sql(
        store,
        "INSERT INTO audit_log (seq, at, actor, action, outcome, details, prev_hash, hash) "
        "VALUES (3, :at, 'intruder', 'auth.login', 'success', '{}', :p, :h)",
        at=at,
        p=last.hash,
        h=h,
    )
    result = await audit.verify()
    assert not result.ok
    assert any("not appended through QLP" in p for p in result.problems), result.problems


async def test_concurrent_appends_from_several_connections_form_one_chain(
    store: Store, db_url: str
) -> None:
    # Separate engines stand for separate processes: the advisory lock is the only thing
    # that orders their appends.
    engines = [await connect(db_url) for _ in range(3)]
    try:
        stores = [AuditStore(Store(e)) for e in engines]
        per_task = 15

        async def writer(audit: AuditStore, number: int) -> None:
            for i in range(per_task):
                await audit.append(
                    AuditEntry(
                        actor=f"writer-{number}",
                        action="test.append",
                        outcome="success",
                        details={"i": i},
                    )
                )

        await asyncio.gather(*(writer(stores[n % 3], n) for n in range(6)))
    finally:
        for e in engines:
            await e.dispose()
    audit = AuditStore(store)
    rows = await audit.list(limit=1000)
    assert [r.seq for r in rows] == list(range(1, 6 * per_task + 1))
    assert all(b.prev_hash == a.hash for a, b in itertools.pairwise(rows))
    assert all(a.at <= b.at for a, b in itertools.pairwise(rows))
    result = await audit.verify()
    assert result.ok, result.problems
    assert result.rows == 90
