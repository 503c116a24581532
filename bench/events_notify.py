"""What the NOTIFY in every event insert costs the hot path (store/statements.py).

    .venv/bin/python -m bench.events_notify [--rounds 3]

A private embedded PostgreSQL with one listener (as every API process has). The events-only
statement (`APPEND_EVENTS`, one event each) with its NOTIFY against the same statement
without it (the baseline, measured in the same run, rounds alternating), in three shapes:
- `group_commit`: through the store's group commit, 16 concurrent callers per engine, for
  1 and 4 engines (processes' worth): what the hot path of running tasks does;
- `connections`: 1 and 16 connections each committing its own statements one at a time
  (what separate transactions, e.g. `append_event`, do).
`ratio` = statements/s with NOTIFY / without.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import psycopg

from bench._common import machine, private_postgres, report
from qlp.domain.ids import new_intent_id
from qlp.store import statements as st
from qlp.store.db import connect
from qlp.store.notify import conninfo
from qlp.store.repository import Store

WITH = st.APPEND_EVENTS
WITHOUT = WITH.replace("FROM s, n, jsonb", "FROM s, jsonb")


def _params(intent_id: str) -> dict[str, Any]:
    return {
        "intent_id": intent_id,
        "n_events": 1,
        "now": datetime.now(UTC),
        "events": json.dumps([{"type": "bench", "payload": {"k": 1}}]),
    }


async def _grouped(stores: list[Store], ids: list[str], sql: str, per_caller: int) -> None:
    async def caller(store: Store, intent_id: str) -> None:
        for _ in range(per_caller):
            await store._hot.run(sql, _params(intent_id))

    await asyncio.gather(
        *(caller(s, i) for s, i in zip(stores, ids, strict=True) for _ in range(16))
    )


async def _connections(dsn: str, ids: list[str], sql: str, per_conn: int) -> None:
    async def one(intent_id: str) -> None:
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as c:
            for _ in range(per_conn):
                await c.execute(sql, _params(intent_id))

    await asyncio.gather(*(one(i) for i in ids))


async def run(url: str, rounds: int) -> dict[str, Any]:
    stores = [Store(await connect(url, pool_size=20)) for _ in range(4)]
    ids = [new_intent_id() for _ in range(16)]
    for intent_id in ids:
        await stores[0].create_intent(intent_id, "b", options={}, user_id=None, workspace="/tmp")
    dsn = conninfo(stores[0].engine)
    listener = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
    await listener.execute(f"LISTEN {st.EVENTS_CHANNEL}")

    async def drain() -> None:
        async for _ in listener.notifies():
            pass

    draining = asyncio.create_task(drain())
    shapes: dict[str, Callable[[str], Awaitable[None]]] = {
        "group_commit_1_engine": lambda sql: _grouped(stores[:1], ids[:1], sql, 100),
        "group_commit_4_engines": lambda sql: _grouped(stores, ids[:4], sql, 50),
        "connections_1": lambda sql: _connections(dsn, ids[:1], sql, 1000),
        "connections_16": lambda sql: _connections(dsn, ids, sql, 200),
    }
    counts = {
        "group_commit_1_engine": 1600,
        "group_commit_4_engines": 3200,
        "connections_1": 1000,
        "connections_16": 3200,
    }
    rates: dict[tuple[str, str], list[float]] = {}
    for _ in range(rounds):
        for shape, work in shapes.items():
            for name, sql in (("without", WITHOUT), ("with", WITH)):
                t = time.perf_counter()
                await work(sql)
                rates.setdefault((shape, name), []).append(
                    counts[shape] / (time.perf_counter() - t)
                )
    draining.cancel()
    await listener.close()
    for s in stores:
        await s.engine.dispose()
    out: dict[str, Any] = {}
    for shape in shapes:
        with_notify = statistics.median(rates[(shape, "with")])
        without = statistics.median(rates[(shape, "without")])
        out[shape] = {
            "statements_per_s_with_notify": round(with_notify),
            "statements_per_s_without": round(without),
            "ratio": round(with_notify / without, 3),
        }
    return out


def main(rounds: int) -> None:
    with private_postgres() as (url, _home):
        result = asyncio.run(run(url, rounds))
    report("events_notify", {"rounds": rounds, **result, "machine": machine()})


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    main(parser.parse_args().rounds)
