"""Events across processes (engine/relay.py): two Store/EventBus pairs on one database stand
for two processes. Events one commits reach the other's subscribers by LISTEN/NOTIFY, in
order, once each, mixed with the other's own; a listener whose connection is killed
reconnects and catches up what was committed while it was deaf."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import psycopg
from sqlalchemy import text

from qlp.domain.events import Event
from qlp.domain.ids import new_intent_id
from qlp.engine.events import EventBus
from qlp.engine.relay import EventRelay
from qlp.store.db import connect
from qlp.store.repository import Store


@dataclass
class Node:
    """One process's worth: an engine, its store publishing to its bus, maybe a relay."""

    store: Store
    bus: EventBus
    relay: EventRelay | None


@contextlib.asynccontextmanager
async def node(db_url: str, *, relay: bool) -> AsyncIterator[Node]:
    engine = await connect(db_url)
    bus = EventBus()
    store = Store(engine, bus.publish)
    r = EventRelay(store, bus) if relay else None
    if r is not None:
        await r.start()
    try:
        yield Node(store, bus, r)
    finally:
        if r is not None:
            await r.stop()
        await engine.dispose()


async def _create(store: Store, intent_id: str) -> None:
    await store.create_intent(intent_id, "relay me", options={}, user_id=None, workspace="/tmp/w")


async def _take(queue: asyncio.Queue[Event], upto: int) -> list[int]:
    """Seqs as the bus hands them out, until `upto` arrived (or a duplicate past it)."""
    got: list[int] = []
    async with asyncio.timeout(60):
        while not got or got[-1] < upto:
            got.append((await queue.get()).seq)
    await asyncio.sleep(0.2)  # anything delivered twice would be queued by now
    while not queue.empty():
        got.append(queue.get_nowait().seq)
    return got


async def test_events_of_two_processes_reach_a_subscriber_of_one_in_order_once(
    db_url: str,
) -> None:
    async with node(db_url, relay=False) as a, node(db_url, relay=True) as b:
        intent_id = new_intent_id()
        # Followed before it exists, so every event of it must come through the bus.
        queue = b.bus.subscribe(intent_id)
        b.bus.caught_up(intent_id, 0)
        await _create(a.store, intent_id)

        async def from_a(k: int) -> None:
            if k % 3 == 0:  # a transaction with several events
                async with a.store.engine.begin() as conn:
                    events = await a.store.commit_events(
                        conn, intent_id, [("test.a", {"k": k}), ("test.a", {"k": k, "n": 2})]
                    )
                await a.store.publish(events)
            else:
                await a.store.append_event(intent_id, "test.a", {"k": k})

        async def from_b(k: int) -> None:
            await b.store.append_event(intent_id, "test.b", {"k": k})

        await asyncio.gather(*(from_a(k) for k in range(30)), *(from_b(k) for k in range(30)))
        total = len(await a.store.list_events(intent_id))
        assert total == 1 + 30 + 10 + 30
        got = await _take(queue, total)
        assert got == list(range(1, total + 1))
        assert b.bus.mark(intent_id) == total


async def test_a_subscriber_that_read_the_backlog_gets_the_rest_from_the_other_process(
    db_url: str,
) -> None:
    async with node(db_url, relay=False) as a, node(db_url, relay=True) as b:
        intent_id = new_intent_id()
        await _create(a.store, intent_id)
        for k in range(5):
            await a.store.append_event(intent_id, "test.before", {"k": k})
        # What the stream route does: subscribe, read the backlog, say where it is.
        queue = b.bus.subscribe(intent_id)
        backlog = await b.store.list_events(intent_id)
        b.bus.caught_up(intent_id, backlog[-1].seq)
        for k in range(20):
            await a.store.append_event(intent_id, "test.after", {"k": k})
        got = await _take(queue, 26)
        assert [e.seq for e in backlog] + got == list(range(1, 27))


async def test_events_committed_while_the_listener_is_cut_off_still_arrive(db_url: str) -> None:
    async with node(db_url, relay=False) as a, node(db_url, relay=True) as b:
        assert b.relay is not None
        intent_id = new_intent_id()
        queue = b.bus.subscribe(intent_id)
        b.bus.caught_up(intent_id, 0)
        await _create(a.store, intent_id)
        await a.store.append_event(intent_id, "test.before", {})
        assert await _take(queue, 2) == [1, 2]
        pid = b.relay.backend_pid
        assert pid is not None
        database = a.store.engine.url.database
        other_db = a.store.engine.url.set(drivername="postgresql", database="postgres")
        async with await psycopg.AsyncConnection.connect(
            other_db.render_as_string(hide_password=False), autocommit=True
        ) as admin:
            # New connections refused, so the listener cannot come back before the events
            # below are committed: their NOTIFYs go to nobody.
            await admin.execute(f'ALTER DATABASE "{database}" WITH ALLOW_CONNECTIONS false')
            try:
                await admin.execute("SELECT pg_terminate_backend(%s, 10000)", (pid,))
                for k in range(10):  # a's pooled connection is still open
                    await a.store.append_event(intent_id, "test.deaf", {"k": k})
                async with asyncio.timeout(60):
                    while b.relay.backend_pid is not None:  # it noticed the loss
                        await asyncio.sleep(0.02)
            finally:
                await admin.execute(f'ALTER DATABASE "{database}" WITH ALLOW_CONNECTIONS true')
        got = await _take(queue, 12)
        assert got == list(range(3, 13))
        assert b.relay.reconnects == 1
        # and it hears live events again
        await a.store.append_event(intent_id, "test.after", {})
        assert await _take(queue, 13) == [13]


async def test_own_events_are_not_read_back_and_unfollowed_intents_cost_no_read(
    db_url: str,
) -> None:
    async with node(db_url, relay=True) as b:
        assert b.relay is not None
        reads: list[tuple[Any, ...]] = []
        list_events = b.store.list_events

        async def counting(*args: Any, **kwargs: Any) -> list[Event]:
            reads.append(args)
            return await list_events(*args, **kwargs)

        b.store.list_events = counting  # type: ignore[method-assign]
        followed, other = new_intent_id(), new_intent_id()
        queue = b.bus.subscribe(followed)
        b.bus.caught_up(followed, 0)
        for intent_id in (followed, other):
            await _create(b.store, intent_id)
            for k in range(10):
                await b.store.append_event(intent_id, "test.own", {"k": k})
        assert await _take(queue, 11) == list(range(1, 12))
        async with b.store.engine.connect() as conn:  # the NOTIFYs surely arrived
            await conn.execute(text("SELECT pg_sleep(0.2)"))
        await asyncio.sleep(0.2)
        assert all(args[0] != other for args in reads)
        assert queue.empty()
