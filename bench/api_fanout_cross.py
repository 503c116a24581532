"""WebSocket fan-out of events another process commits: one intent, 200 subscribers.

    .venv/bin/python -m bench.api_fanout_cross [--subscribers 200] [--plan-delay 8]

An intent (a 10-task plan: 2 layers of 5) is created queued in the database by this script,
so the server does not run it; `--subscribers` WebSocket streams of it are opened on the
server (they get `intent.queued` from the backlog); then a `qlp resume` process runs it on
the same database. Every event after the first is committed by that process and reaches
the server only through LISTEN/NOTIFY (engine/relay.py). Delivery delay = the time a
subscriber received an event - the event's `at` (the same host clock, the committing
process's clock), over those events. Each subscriber must receive every event of the
intent exactly once, in order (compared with GET /intents/{id}/events): the run fails
otherwise.

Baseline in the same run, on the same server: bench/api_fanout.py's run, an intent the
server runs itself (events published in-process) to the same number of subscribers.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from typing import Any

import httpx

from bench._common import layered_dag, machine, report
from bench.api_common import PASSWORD, Service, load, ms, percentile, plan_script
from bench.api_common import service as start_service
from bench.api_fanout import check_complete, subscribe_all
from bench.api_fanout import run as same_process_run
from qlp.engine.wiring import open_runtime

API = "/api/v1"


async def queued_intent(svc: Service, text: str) -> str:
    async with open_runtime(svc.server.settings()) as rt:
        record = await rt.pipeline(need_llm=False).submit(text)
        return record.id


async def run_cross(svc: Service, n: int) -> dict[str, Any]:
    token = svc.server.token("root", PASSWORD)
    intent_id = await queued_intent(svc, "cross-process fan-out benchmark")
    subs, tasks, all_connected = await subscribe_all(svc, intent_id, token, n)
    resume = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "qlp",
        "resume",
        intent_id,
        env=svc.server.env,
        cwd=svc.home,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await resume.communicate()
    if resume.returncode != 0:
        raise RuntimeError(f"qlp resume failed: {err.decode()[-2000:]}")
    await asyncio.wait_for(asyncio.gather(*tasks), 120)
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=svc.base + API, headers=headers, timeout=60) as c:
        events = (await c.get(f"/intents/{intent_id}/events", params={"limit": 1000})).json()
    expected = [e["seq"] for e in events]
    assert expected == list(range(1, len(expected) + 1)), expected
    assert events[-1]["type"] == "intent.completed", events[-1]
    check_complete(subs, expected)
    # Every event but intent.queued was committed by `qlp resume` after all were connected.
    delays = [rcv - at for s in subs for (seq, _t, at, rcv) in s.events if seq > 1]
    assert min(at for s in subs for (seq, _t, at, _r) in s.events if seq > 1) > all_connected
    last = [s.events[-1][3] - s.events[-1][2] for s in subs]
    # The planner call is held for --plan-delay: the pace is timed from the plan on.
    first_at = min(at for s in subs for (_s, ty, at, _r) in s.events if ty == "intent.planned")
    active = max(s.events[-1][3] for s in subs) - first_at
    return {
        "subscribers": n,
        "events_per_subscriber": len(expected),
        "relayed_events_per_subscriber": len(expected) - 1,
        "all_got_every_event_once_in_order": True,
        "delivery_delay_p50_ms": ms(percentile(delays, 50)),
        "delivery_delay_p99_ms": ms(percentile(delays, 99)),
        "delivery_delay_max_ms": ms(max(delays)),
        "final_event_delay_p50_ms": ms(percentile(last, 50)),
        "final_event_delay_p99_ms": ms(percentile(last, 99)),
        # From the plan's commit to the last delivery: the fan-out's pace.
        "active_s": round(active, 2),
        "messages_per_s": round(n * (len(expected) - 3) / active),
    }


def main(n: int, plan_delay: float) -> None:
    deps = layered_dag(5, 2)
    started = time.time()
    with start_service(plan_script(deps, copies=2, plan_delay=plan_delay)) as svc:
        cross = asyncio.run(run_cross(svc, n))
        same = asyncio.run(same_process_run(svc, n, plan_delay))
    report(
        "api_fanout_cross",
        {
            "plan_tasks": len(deps),
            "cross_process": cross,
            "same_process_baseline": {
                k: same[k]
                for k in (
                    "events_per_subscriber",
                    "live_events_per_subscriber",
                    "delivery_delay_p50_ms",
                    "delivery_delay_p99_ms",
                    "delivery_delay_max_ms",
                    "final_event_delay_p50_ms",
                    "active_s",
                )
            },
            "same_process_messages_per_s": round(
                n * same["live_events_per_subscriber"] / same["active_s"]
            ),
            "p99_ratio_cross_to_same": round(
                cross["delivery_delay_p99_ms"] / max(same["delivery_delay_p99_ms"], 0.001), 2
            ),
            "wall_s": round(time.time() - started, 1),
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
