"""Intent submission through the service: accepted per second, and completed per second.

    .venv/bin/python -m bench.api_submit [--intents 200] [--concurrency 16]

`--intents` intents of a 3-task plan are POSTed to `/api/v1/intents` by `--concurrency`
concurrent connections (httpx.AsyncClient); every answer must be 202. Then the run waits
until all have completed (none may fail). The fake model (own process, 127.0.0.1) answers
instantly; QLP_VALIDATE=false (agents only: no sandbox checks, review or capsule).
QLP_SERVER_MAX_RUNNING is left at its default (2 intents run at once; the rest queue);
QLP_USER_MAX_ACTIVE_INTENTS and QLP_SUBMIT_RATE_PER_MINUTE are raised so that neither
refuses a submission (they are per-user abuse limits, not capacity).

Baselines in the same run:
- `GET /api/v1/auth/me` at the same concurrency: authentication alone, no write. `ratio`
  = me rps / submit rps is the cost of a submission's writes (intent row, event, audit row).
- the engine alone: the same intents run in-process through `Runtime.pipeline()` (same
  database, same fake model), 2 at a time like the server, no HTTP. `ratio` = service
  completion time / engine-only time.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections import Counter
from datetime import datetime
from typing import Any

import httpx

from bench._common import machine, report
from bench.api_common import (
    PASSWORD,
    Service,
    cpu_share,
    load,
    ms,
    percentile,
    plan_script,
    service,
)
from qlp.config import Settings
from qlp.domain.states import IntentStatus
from qlp.engine.wiring import open_runtime

API = "/api/v1"
DEPS: dict[str, list[str]] = {"QL-DEV-001": [], "QL-TST-002": ["QL-DEV-001"], "QL-DOC-003": []}
RUNNING = 2  # QLP_SERVER_MAX_RUNNING's default


async def hammer(
    c: httpx.AsyncClient, concurrency: int, count: int, call: Any
) -> tuple[list[float], Counter[int], float, list[Any]]:
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    bodies: list[Any] = []
    remaining = count

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            t0 = time.perf_counter()
            r = await call(c, remaining)
            latencies.append(time.perf_counter() - t0)
            statuses[r.status_code] += 1
            bodies.append(r.json())

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, statuses, time.perf_counter() - started, bodies


async def all_intents(c: httpx.AsyncClient) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 200}
        if cursor:
            params["cursor"] = cursor
        page = (await c.get("/intents", params=params)).json()
        items += page["items"]
        cursor = page["next_cursor"]
        if not cursor:
            return items


def _done(metrics_text: str, n: int) -> tuple[int, int]:
    counts = {}
    for line in metrics_text.splitlines():
        if line.startswith("qlp_intents{"):
            state = line.split('state="', 1)[1].split('"', 1)[0]
            counts[state] = float(line.rsplit(" ", 1)[1])
    return int(counts.get("completed", 0)), int(counts.get("failed", 0))


async def through_service(svc: Service, n: int, concurrency: int) -> dict[str, Any]:
    token = svc.server.token("ann", PASSWORD)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(
        base_url=svc.base + API, headers=headers, limits=limits, timeout=60
    ) as c:
        await asyncio.gather(*(c.get("/auth/me") for _ in range(concurrency * 2)))  # warm

        def me(c: httpx.AsyncClient, i: int) -> Any:
            return c.get("/auth/me")

        me_lat, me_st, me_wall, _ = await hammer(c, concurrency, n, me)
        assert set(me_st) == {200}, me_st

        def submit(c: httpx.AsyncClient, i: int) -> Any:
            return c.post("/intents", json={"text": f"benchmark intent {i}"})

        cpu0 = svc.cpu()
        t0 = time.time()
        client0 = time.process_time()
        lat, statuses, submit_wall, _bodies = await hammer(c, concurrency, n, submit)
        cpu_submit = svc.cpu()
        client_submit = time.process_time()
        assert set(statuses) == {202}, statuses
        # Wait for the queue to drain (the gauge is refreshed on each scrape).
        while True:
            completed, failed = _done((await c.get("/metrics")).text, n)
            assert failed == 0, f"{failed} intents failed"
            if completed == n:
                break
            await asyncio.sleep(0.05)
        cpu1 = svc.cpu()
        client1 = time.process_time()
        t1 = time.time()
        intents = await all_intents(c)
    assert len(intents) == n
    assert {i["status"] for i in intents} == {"completed"}
    finished = [datetime.fromisoformat(i["finished_at"]).timestamp() for i in intents]
    e2e = [
        datetime.fromisoformat(i["finished_at"]).timestamp()
        - datetime.fromisoformat(i["created_at"]).timestamp()
        for i in intents
    ]
    complete_wall = max(finished) - t0
    return {
        "auth_me_baseline": {
            "rps": round(n / me_wall, 1),
            "p50_ms": ms(percentile(me_lat, 50)),
            "p99_ms": ms(percentile(me_lat, 99)),
        },
        "submit": {
            "accepted_per_s": round(n / submit_wall, 1),
            "p50_ms": ms(percentile(lat, 50)),
            "p99_ms": ms(percentile(lat, 99)),
            "wall_s": round(submit_wall, 2),
            "cpu_cores": cpu_share(cpu0, cpu_submit, submit_wall, client=client_submit - client0),
        },
        "complete": {
            "completed_per_s": round(n / complete_wall, 2),
            "wall_s_first_submit_to_last_finish": round(complete_wall, 2),
            "intent_latency_p50_s": round(percentile(e2e, 50), 2),
            "intent_latency_p99_s": round(percentile(e2e, 99), 2),
            "cpu_cores": cpu_share(cpu0, cpu1, t1 - t0, client=client1 - client0),
            "server_cpu_ms_per_intent": round((cpu1["server"] - cpu0["server"]) * 1000 / n, 1),
            "postgres_cpu_ms_per_intent": round(
                (cpu1["postgres"] - cpu0["postgres"]) * 1000 / n, 1
            ),
        },
        "ratio_me_rps_over_submit_rps": round(submit_wall / me_wall, 2),
    }


async def engine_only(svc: Service, n: int) -> dict[str, Any]:
    """The same intents, in this process, straight through the pipeline, RUNNING at a time."""
    env = svc.server.env
    settings = Settings(
        home=svc.home / "engine-only",
        database_url=env["QLP_DATABASE_URL"],
        llm_provider="openai",
        llm_model=env["QLP_LLM_MODEL"],
        llm_base_url=env["QLP_LLM_BASE_URL"],
        openai_api_key=env["OPENAI_API_KEY"],
        llm_retry_base_s=0.01,
        validation_enabled=False,
    )
    gate = asyncio.Semaphore(RUNNING)
    async with open_runtime(settings) as rt:
        pipeline = rt.pipeline()

        async def one(i: int) -> None:
            async with gate:
                intent = await pipeline.submit(f"engine-only intent {i}")
                final = await pipeline.run(intent.id)
                assert final.status == IntentStatus.COMPLETED, final.error

        started = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(n)))
        wall = time.perf_counter() - started
    return {"completed_per_s": round(n / wall, 2), "wall_s": round(wall, 2)}


def main(n: int, concurrency: int) -> None:
    env = {
        "QLP_USER_MAX_ACTIVE_INTENTS": str(n * 10),
        "QLP_SUBMIT_RATE_PER_MINUTE": str(n * 100),
    }
    # Two sets of answers per intent: the service run, then the engine-only run.
    with service(plan_script(DEPS, copies=2 * n), env=env) as svc:
        via_service = asyncio.run(through_service(svc, n, concurrency))
        engine = asyncio.run(engine_only(svc, n))
    via_service["engine_only_baseline"] = engine
    via_service["ratio_service_over_engine_completion_time"] = round(
        via_service["complete"]["wall_s_first_submit_to_last_finish"] / engine["wall_s"], 2
    )
    report(
        "api_submit",
        {
            "intents": n,
            "concurrency": concurrency,
            "server_max_running": RUNNING,
            **via_service,
            "load_avg_after": load(),
            "machine": machine(),
        },
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--intents", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    main(args.intents, args.concurrency)
