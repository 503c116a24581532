"""The shared rate-limit counters (`src/qlp/store/counters.py`) against a bare round trip.

    .venv/bin/python -m bench.rate_counters [--ops 2000] [--concurrency 1 8]

A private embedded PostgreSQL. For each concurrency (coroutines on one engine, as one API
process would), the time per operation of: `SELECT 1` (the baseline: one round trip on the
same pool), `read` of the three login names (what every login attempt costs), `hit` of three
names (a failed login) and `hit` of one name (a submission). `ratio` = op time / baseline.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy import text

from bench._common import machine, private_postgres, report
from qlp.store.counters import RateCounters
from qlp.store.db import connect
from qlp.store.repository import Store


async def _timed(op: Callable[[int], Awaitable[object]], ops: int, concurrency: int) -> float:
    next_op = iter(range(ops))

    async def worker() -> None:
        for n in next_op:
            await op(n)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return (time.perf_counter() - started) / ops


async def main(ops: int, concurrencies: list[int]) -> None:
    with private_postgres() as (url, _home):
        engine = await connect(url)  # migrates
        store = Store(engine)
        counters = RateCounters(store)
        results: dict[str, Any] = {"machine": machine(), "ops": ops, "runs": []}

        async def select_one(_: int) -> None:
            async with store.autocommit.connect() as conn:
                await conn.execute(text("SELECT 1"))

        async def login_read(n: int) -> None:
            await counters.read([f"ip:{n % 50}", f"user:u{n % 7}", f"pair:{n % 50}:u{n % 7}"])

        async def login_fail(n: int) -> None:
            await counters.hit([f"ip:{n % 50}", f"user:u{n % 7}", f"pair:{n % 50}:u{n % 7}"])

        async def submit(n: int) -> None:
            await counters.hit([f"submit:{n % 20}"])

        for concurrency in concurrencies:
            await _timed(select_one, 200, concurrency)  # warm the pool
            base = await _timed(select_one, ops, concurrency)
            row: dict[str, Any] = {"concurrency": concurrency, "select1_ms": round(base * 1e3, 3)}
            for name, op in (("read3", login_read), ("hit3", login_fail), ("hit1", submit)):
                took = await _timed(op, ops, concurrency)
                row[f"{name}_ms"] = round(took * 1e3, 3)
                row[f"{name}_ops_s"] = round(1 / took)
                row[f"{name}_ratio"] = round(took / base, 2)
            results["runs"].append(row)
        await engine.dispose()
        report("rate_counters", results)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    args = parser.parse_args()
    asyncio.run(main(args.ops, args.concurrency))
