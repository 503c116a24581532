"""Leases on intents (store/leases.py) on the real database, two Stores standing in for two
processes: one holder at a time; a holder paused past its lease is taken over, and then
every kind of state write it attempts is refused in the statement itself (nothing of it
lands: no event, no task move, no transcript row, no status); its renewal notices and ends
its run with LeaseLostError; a process holding no lease (an API cancelling a queued intent)
still writes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from sqlalchemy import text

from qlp.domain import events as ev
from qlp.domain.plan import Plan
from qlp.domain.states import IntentStatus, TaskStatus
from qlp.errors import IntentBusyError, LeaseLostError
from qlp.llm.base import CallRecord, LLMRequest, Message
from qlp.store.db import connect
from qlp.store.repository import Store
from tests.support import plan_task

PLAN = Plan.model_validate(
    {"summary": "two", "tasks": [plan_task("QL-DEV-001"), plan_task("QL-DOC-002", ["QL-DEV-001"])]}
)


@pytest.fixture
async def stores(db_url: str) -> AsyncIterator[tuple[Store, Store]]:
    a, b = await connect(db_url), await connect(db_url)
    try:
        yield Store(a, lease_s=2.0), Store(b, lease_s=2.0)
    finally:
        await a.dispose()
        await b.dispose()


async def _intent(store: Store, name: str) -> str:
    await store.create_intent(name, "lease me", options={}, user_id=None, workspace="/nowhere")
    return name


async def _expire(store: Store, intent_id: str) -> None:
    """What a pause longer than the lease leaves: the lease's time is up."""
    async with store.engine.begin() as conn:
        await conn.execute(
            text("UPDATE intents SET lease_until = now() - interval '1 second' WHERE id = :i"),
            {"i": intent_id},
        )


async def _snapshot(store: Store, intent_id: str) -> dict[str, Any]:
    intent = await store.get_intent(intent_id)
    return {
        "status": intent.status,
        "llm_calls": intent.llm_calls,
        "events": [(e.seq, e.type) for e in await store.list_events(intent_id)],
        "tasks": [(x.id, x.status, x.attempts) for x in await store.get_tasks(intent_id)],
        "calls": len(await store.list_llm_calls(intent_id)),
        "files": await store.get_files(intent_id),
    }


def _call() -> CallRecord:
    request = LLMRequest(messages=(Message(role="user", content="hi"),), purpose="t")
    return CallRecord(
        request=request, response=None, error="boom", provider="x", model="m", latency_s=0.1
    )


async def test_one_holder_at_a_time_and_a_released_lease_is_free(
    stores: tuple[Store, Store],
) -> None:
    a, b = stores
    intent_id = await _intent(a, "QL-INT-LEASE-1")
    async with a.leases.hold(intent_id):
        with pytest.raises(IntentBusyError, match="being run by another QLP process"):
            async with b.leases.hold(intent_id):
                pass
    async with b.leases.hold(intent_id) as lease:  # released: free at once
        assert lease.epoch == 2


async def test_the_lease_of_a_holder_whose_connection_ended_is_claimed_at_once(
    stores: tuple[Store, Store],
) -> None:
    a, b = stores
    intent_id = await _intent(a, "QL-INT-LEASE-GONE")
    async with a.leases.hold(intent_id):
        # The holder is killed: PostgreSQL ends its sessions (here: the one holding the
        # epoch's session lock, as when the process dies) long before the lease expires.
        async with b.engine.begin() as conn:
            ended = (
                await conn.execute(
                    text(
                        "SELECT pg_terminate_backend(pid) FROM pg_locks "
                        "WHERE locktype = 'advisory' AND database = "
                        "(SELECT oid FROM pg_database WHERE datname = current_database())"
                    )
                )
            ).all()
        assert len(ended) == 1
        await asyncio.sleep(0.2)
        async with b.leases.hold(intent_id) as lease:
            assert lease.epoch == 2


async def test_a_lease_is_renewed_while_its_holder_works(stores: tuple[Store, Store]) -> None:
    a, b = stores
    intent_id = await _intent(a, "QL-INT-LEASE-2")
    async with a.leases.hold(intent_id):
        await asyncio.sleep(5.0)  # 2.5 times its time to live
        with pytest.raises(IntentBusyError):
            async with b.leases.hold(intent_id):
                pass


WRITES: dict[str, Callable[[Store, str], Awaitable[object]]] = {
    "event": lambda s, i: s.append_event(i, "task.retry", {"task_id": "QL-DEV-001"}),
    "task move": lambda s, i: s.set_task_status(
        i, "QL-DEV-001", TaskStatus.RUNNING, event_type=ev.TASK_STARTED
    ),
    "task output": lambda s, i: s.record_task_output(
        i, "QL-DEV-001", [("a.py", "0" * 64, 1)], [], "n"
    ),
    "model call": lambda s, i: s.record_llm_call(i, "QL-DEV-001", _call()),
    "intent status": lambda s, i: s.set_intent_status(
        i, IntentStatus.FAILED, event_type=ev.INTENT_FAILED, error="x"
    ),
    "plan": lambda s, i: s.save_plan(i, PLAN, ["QL-DEV-001", "QL-DOC-002"]),
}


@pytest.mark.parametrize("write", sorted(WRITES))
async def test_a_paused_holder_taken_over_writes_nothing(
    stores: tuple[Store, Store], write: str
) -> None:
    a, b = stores
    intent_id = await _intent(a, f"QL-INT-ZOMBIE-{write.replace(' ', '-').upper()}")
    await a.set_intent_status(intent_id, IntentStatus.PLANNING, event_type=ev.INTENT_PLANNING)
    await a.save_plan(intent_id, PLAN, ["QL-DEV-001", "QL-DOC-002"])
    refused: list[BaseException] = []

    async def zombie() -> None:
        async with a.leases.hold(intent_id):
            # Paused: its lease runs out and the other process claims the intent.
            lease_task = next(
                t for t in asyncio.all_tasks() if t.get_name() == f"qlp-lease-{intent_id}"
            )
            lease_task.cancel()  # no renewal while "stopped"
            await _expire(a, intent_id)
            async with b.leases.hold(intent_id):
                before = await _snapshot(b, intent_id)
                with pytest.raises(LeaseLostError) as caught:
                    await WRITES[write](a, intent_id)
                refused.append(caught.value)
                assert await _snapshot(b, intent_id) == before
                # The new holder's own writes go through.
                await b.append_event(intent_id, "task.retry", {"task_id": "QL-DEV-001"})

    await zombie()
    assert "taken over by another QLP process" in str(refused[0])


async def test_a_lost_lease_ends_the_holders_run(stores: tuple[Store, Store]) -> None:
    a, b = stores
    intent_id = await _intent(a, "QL-INT-LEASE-LOST")
    reached: list[str] = []

    async def run() -> None:
        async with a.leases.hold(intent_id):
            # Another process claims it (as after a pause) while this one still works.
            await _expire(a, intent_id)
            async with b.engine.begin() as conn:
                await conn.execute(
                    text("UPDATE intents SET lease = lease + 1 WHERE id = :i"), {"i": intent_id}
                )
            await asyncio.sleep(30)  # the renewal (every 0.5 s) finds the lease gone
            reached.append("never")

    with pytest.raises(LeaseLostError):
        await asyncio.wait_for(run(), timeout=20)
    assert reached == []
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]


async def test_a_process_holding_no_lease_still_writes(stores: tuple[Store, Store]) -> None:
    a, b = stores
    intent_id = await _intent(a, "QL-INT-NO-LEASE")
    await b.set_intent_status(
        intent_id, IntentStatus.CANCELLED, event_type=ev.INTENT_CANCELLED, error="by the user"
    )
    assert (await a.get_intent(intent_id)).status == IntentStatus.CANCELLED
