"""The login and submission limits on PostgreSQL (docs/SECURITY.md, "Login flood"):
failures are counted, refusals are not; a lockout on a username holds only for clients that
failed on it and are not known to the account; two API processes share one count."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import text

from qlp.api.limits import RateLimits
from qlp.errors import LimitExceededError
from qlp.store.counters import RateCounters
from qlp.store.db import connect
from qlp.store.repository import Store


@pytest.fixture
async def counters(db_url: str) -> AsyncIterator[RateCounters]:
    engine = await connect(db_url)
    async with engine.begin() as conn:
        await conn.execute(text("DELETE FROM rate_counters"))
    try:
        yield RateCounters(Store(engine))
    finally:
        await engine.dispose()


async def _allowed(limits: RateLimits, client: str, user: str, known: bool = False) -> bool:
    async def is_known() -> bool:
        return known

    try:
        await limits.login_allowed(client, user, is_known)
    except LimitExceededError:
        return False
    return True


async def test_only_failures_count_and_refusals_do_not_extend_the_lockout(
    counters: RateCounters,
) -> None:
    limits = RateLimits(counters, login_per_minute=3, submit_per_minute=1)
    for _ in range(10):  # successful logins cost nothing
        assert await _allowed(limits, "10.0.0.1", "ann")
    for _ in range(3):
        await limits.login_failed("10.0.0.1", "ann")
    assert not await _allowed(limits, "10.0.0.1", "ann")
    assert not await _allowed(limits, "10.0.0.1", "someone-else")  # the client is over its limit
    assert await _allowed(limits, "10.0.0.2", "bob")


async def test_a_username_over_its_limit_refuses_only_clients_that_failed_on_it(
    counters: RateCounters,
) -> None:
    limits = RateLimits(counters, login_per_minute=3, submit_per_minute=1)
    for n in range(3):
        await limits.login_failed(f"10.0.1.{n}", "ann")
    assert not await _allowed(limits, "10.0.1.0", "ann")  # failed on ann
    assert await _allowed(limits, "10.0.1.0", "bob")  # other names are not locked
    assert await _allowed(limits, "10.0.2.1", "ann")  # a fresh client may try once ...
    await limits.login_failed("10.0.2.1", "ann")
    assert not await _allowed(limits, "10.0.2.1", "ann")  # ... not twice
    assert await _allowed(limits, "10.0.2.1", "ann", known=True)  # unless the account knows it


async def test_the_known_check_is_asked_only_while_a_username_is_locked(
    counters: RateCounters,
) -> None:
    limits = RateLimits(counters, login_per_minute=2, submit_per_minute=1)
    asked: list[str] = []

    async def known() -> bool:
        asked.append("asked")
        return False

    await limits.login_allowed("10.0.0.1", "ann", known)
    assert asked == []


async def test_two_processes_share_the_counts(db_url: str, counters: RateCounters) -> None:
    # A second engine stands for a second API process on the same database.
    other_engine = await connect(db_url)
    try:
        here = RateLimits(counters, login_per_minute=3, submit_per_minute=4)
        there = RateLimits(
            RateCounters(Store(other_engine)), login_per_minute=3, submit_per_minute=4
        )
        outcomes = []
        for limits in (here, there, here, there, here, there):
            try:
                await limits.submit("QLU-1")
                outcomes.append("ok")
            except LimitExceededError as exc:
                outcomes.append(f"refused {exc.retry_after_s}")
        assert outcomes[:4] == ["ok"] * 4
        assert all(o.startswith("refused ") and int(o.split()[1]) >= 1 for o in outcomes[4:])
        # Concurrent submissions from both: never more than the limit get through.
        await _sql(counters, "DELETE FROM rate_counters")
        results = await asyncio.gather(
            *(lim.submit("QLU-2") for lim in (here, there) * 10), return_exceptions=True
        )
        assert sum(r is None for r in results) == 4
        await here.login_failed("10.0.0.1", "ann")
        await there.login_failed("10.0.0.1", "ann")
        await here.login_failed("10.0.0.1", "ann")
        with pytest.raises(LimitExceededError):
            await there.login_allowed("10.0.0.1", "bob", _unknown)
    finally:
        await other_engine.dispose()


async def _sql(counters: RateCounters, statement: str) -> None:
    async with counters.store.engine.begin() as conn:
        await conn.execute(text(statement))


async def _unknown() -> bool:
    return False


async def test_old_windows_are_pruned(counters: RateCounters) -> None:
    await counters.hit(["a", "b"])
    await _sql(
        counters, "UPDATE rate_counters SET window_start = window_start - 5 WHERE name = 'a'"
    )
    assert await counters.prune() == 1
    counts = await counters.read(["a", "b"])
    assert counts["a"].current == 0 and counts["b"].current == 1


async def test_the_per_user_submit_lock_holds_across_processes(
    db_url: str, counters: RateCounters
) -> None:
    # The active-intent cap is checked and the intent stored under this lock; a second
    # engine stands for another API process.
    other_engine = await connect(db_url)
    try:
        other = Store(other_engine)
        order: list[str] = []
        async with counters.store.user_lock("QLU-9"):
            waiter = asyncio.create_task(_take(other, "QLU-9", order))
            done, _ = await asyncio.wait({waiter}, timeout=0.5)
            assert not done  # blocked while this process holds it
            async with other.user_lock("QLU-10"):  # another user's lock is free
                order.append("other user")
            order.append("released")
        await waiter
        assert order == ["other user", "released", "second"]
    finally:
        await other_engine.dispose()


async def _take(store: Store, user_id: str, order: list[str]) -> None:
    async with store.user_lock(user_id):
        order.append("second")
