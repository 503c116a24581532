"""WebSocket fan-out: one intent's events to 200 subscribers.

    .venv/bin/python -m bench.api_fanout [--subscribers 200] [--plan-delay 8]

`--subscribers` WebSocket connections (async `websockets` client, one process) are opened
to `/api/v1/intents/{id}/stream` of one intent (a 10-task plan: 2 layers of 5) while its
planner call is held by the fake model for `--plan-delay` seconds; then the intent runs.
Delivery delay = the time a subscriber received an event - the event's `at` (the same host
clock), over the events emitted after every subscriber was connected ("live" events; those
before come from the backlog and are not timed). Each subscriber must receive every event of
the intent exactly once, in order (compared with GET /intents/{id}/events): the run fails
otherwise.

Baseline in the same run: the same intent's events replayed to the same subscribers after it
finished (a backlog read from PostgreSQL and sent), timed from connect to close.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from datetime import datetime
from typing import Any

import httpx
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from bench._common import layered_dag, machine, report
from bench.api_common import PASSWORD, Service, cpu_share, load, ms, percentile, plan_script
from bench.api_common import service as start_service

API = "/api/v1"


class Subscriber:
    def __init__(self) -> None:
        self.connected = 0.0
        self.closed = 0.0
        self.events: list[tuple[int, str, float, float]] = []  # seq, type, at, received

    async def follow(self, url: str, token: str, ready: asyncio.Event) -> None:
        headers = {"Authorization": f"Bearer {token}"}
        async with connect(url, additional_headers=headers, max_queue=None) as ws:
            self.connected = time.time()
            ready.set()
            try:
                async for raw in ws:
                    received = time.time()
                    message = json.loads(raw)
                    if message.get("event") != "intent":
                        continue
                    at = datetime.fromisoformat(message["at"]).timestamp()
                    self.events.append((message["seq"], message["type"], at, received))
            except ConnectionClosed:
                pass
        self.closed = time.time()


async def subscribe_all(
    svc: Service, intent_id: str, token: str, n: int
) -> tuple[list[Subscriber], list[asyncio.Task[None]], float]:
    """Open n streams. Returns once all are connected: the subscribers, their (still
    running) tasks, and the time the last one connected."""
    url = f"ws://127.0.0.1:{svc.server.port}{API}/intents/{intent_id}/stream"
    subs = [Subscriber() for _ in range(n)]
    readies = [asyncio.Event() for _ in range(n)]
    tasks = [
        asyncio.create_task(s.follow(url, token, r)) for s, r in zip(subs, readies, strict=True)
    ]
    connected = asyncio.ensure_future(asyncio.gather(*(r.wait() for r in readies)))
    done, _ = await asyncio.wait({connected, *tasks}, timeout=120, return_when="FIRST_COMPLETED")
    if connected not in done:  # a stream ended (or failed) before all were open, or timeout
        for t in tasks:
            if t.done() and t.exception() is not None:
                raise RuntimeError("a subscriber failed") from t.exception()
        raise RuntimeError("not every subscriber was connected (within 120 s) before one ended")
    return subs, tasks, max(s.connected for s in subs)


def check_complete(subs: list[Subscriber], expected: list[int]) -> None:
    for i, s in enumerate(subs):
        seqs = [e[0] for e in s.events]
        assert seqs == expected, f"subscriber {i}: got {seqs}, expected {expected}"


async def run(svc: Service, n: int, plan_delay: float) -> dict[str, Any]:
    token = svc.server.token("ann", PASSWORD)
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=svc.base + API, headers=headers, timeout=60) as c:
        r = await c.post("/intents", json={"text": "fan-out benchmark"})
        assert r.status_code == 202, r.text
        intent_id = r.json()["id"]
        submitted = time.time()

        subs, tasks, all_connected = await subscribe_all(svc, intent_id, token, n)
        connect_s = all_connected - submitted
        cpu0, client0, t0 = svc.cpu(), time.process_time(), time.time()
        await asyncio.gather(*tasks)
        cpu1, client1, t1 = svc.cpu(), time.process_time(), time.time()

        events = (await c.get(f"/intents/{intent_id}/events", params={"limit": 1000})).json()
        expected = [e["seq"] for e in events]
        assert expected == list(range(1, len(expected) + 1)), expected
        assert events[-1]["type"] == "intent.completed", events[-1]
        check_complete(subs, expected)

        live_seqs = [
            e["seq"] for e in events if datetime.fromisoformat(e["at"]).timestamp() > all_connected
        ]
        if not any(e["type"].startswith("task.") and e["seq"] in live_seqs for e in events):
            raise RuntimeError(
                f"the intent ran before all {n} subscribers were connected "
                f"({connect_s:.1f} s); raise --plan-delay"
            )
        live = set(live_seqs)
        delays = [rcv - at for s in subs for (seq, _t, at, rcv) in s.events if seq in live]
        # The slowest subscriber: when it got the final event.
        last = [s.events[-1][3] - s.events[-1][2] for s in subs]

        # Baseline: the finished intent's events replayed from the database to everyone.
        replay_started = time.time()
        replayed, tasks, _ = await subscribe_all(svc, intent_id, token, n)
        await asyncio.gather(*tasks)
        replay_wall = max(s.closed for s in replayed) - replay_started
        check_complete(replayed, expected)

    # The CPU window includes the planner's delay, when nothing happens; the active part is
    # from the first live event to the last delivery.
    first = min(datetime.fromisoformat(e["at"]).timestamp() for e in events if e["seq"] in live)
    active = max(s.events[-1][3] for s in subs) - first
    return {
        "subscribers": n,
        "events_per_subscriber": len(expected),
        "live_events_per_subscriber": len(live),
        "all_got_every_event_once_in_order": True,
        "connect_all_s": round(connect_s, 2),
        "delivery_delay_p50_ms": ms(percentile(delays, 50)),
        "delivery_delay_p99_ms": ms(percentile(delays, 99)),
        "delivery_delay_max_ms": ms(max(delays)),
        "final_event_delay_p50_ms": ms(percentile(last, 50)),
        "final_event_delay_p99_ms": ms(percentile(last, 99)),
        "messages_delivered": n * len(expected),
        "active_s": round(active, 2),
        # CPU seconds from "all connected" to "all closed" and, over the active part, in cores.
        "cpu_seconds": {
            k: round(v * (t1 - t0), 2)
            for k, v in cpu_share(cpu0, cpu1, t1 - t0, client=client1 - client0).items()
            if k in ("server", "postgres", "client")
        },
        "cpu_cores_active": {
            k: round(v * (t1 - t0) / active, 2)
            for k, v in cpu_share(cpu0, cpu1, t1 - t0, client=client1 - client0).items()
            if k in ("server", "postgres", "client")
        },
        "server_cpu_ms_per_message": round(
            (cpu1["server"] - cpu0["server"]) * 1000 / (n * len(live)), 3
        ),
        "replay_baseline": {
            "wall_s_connect_to_last_close": round(replay_wall, 2),
            "messages_per_s": round(n * len(expected) / replay_wall, 0),
        },
    }


def main(n: int, plan_delay: float) -> None:
    deps = layered_dag(5, 2)
    with start_service(plan_script(deps, plan_delay=plan_delay)) as svc:
        result = asyncio.run(run(svc, n, plan_delay))
    report(
        "api_fanout",
        {
            "plan_tasks": len(deps),
            "plan_delay_s": plan_delay,
            **result,
            "load_avg_after": load(),
            "machine": machine(),
        },
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subscribers", type=int, default=200)
    parser.add_argument("--plan-delay", type=float, default=8.0)
    args = parser.parse_args()
    main(args.subscribers, args.plan_delay)
