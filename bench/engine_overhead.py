"""Engine overhead: a 50-task plan with a model that answers instantly.

    .venv/bin/python -m bench.engine_overhead [--tasks 50] [--repeat 3]

Baseline (same run): the same 51 model calls made directly on the scripted client, with no
engine. Engine time per task = (pipeline wall time - baseline) / tasks. Target: < 20 ms.
Peak memory is the process's peak RSS, and its growth over the run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time

from bench._common import layered_dag, machine, peak_rss_mib, private_postgres, report, script_for
from qlp.config import Settings
from qlp.domain.states import IntentStatus
from qlp.engine.wiring import open_runtime
from qlp.llm.base import LLMRequest, Message
from qlp.llm.scripted import Script, ScriptedClient


async def baseline(script: dict[str, object], prompts: list[str]) -> float:
    client = ScriptedClient(Script.from_data(script))
    started = time.perf_counter()
    for prompt in prompts:
        await client.complete(LLMRequest(messages=(Message("user", prompt),)))
    return time.perf_counter() - started


async def one_run(settings: Settings) -> tuple[float, list[str]]:
    async with open_runtime(settings) as rt:
        pipeline = rt.pipeline()
        started = time.perf_counter()
        intent = await pipeline.submit("benchmark intent")
        final = await pipeline.run(intent.id)
        wall = time.perf_counter() - started
        assert final.status == IntentStatus.COMPLETED, final.error
        calls = await rt.store.list_llm_calls(final.id)
        prompts = [c.request["messages"][-1]["content"] for c in calls]
    return wall, prompts


async def main(tasks: int, repeat: int) -> None:
    width = 5
    deps = layered_dag(width, tasks // width)
    script = script_for(deps)
    rss_start = peak_rss_mib()
    with private_postgres() as (url, home):
        script_path = home / "script.json"
        script_path.write_text(json.dumps(script))
        settings = Settings(
            home=home,
            database_url=url,
            llm_provider="scripted",
            llm_script=script_path,
            max_parallel_tasks=4,
            max_tasks_per_plan=len(deps),
            validation_enabled=False,  # the engine alone: no sandbox checks
        )
        walls, bases = [], []
        for i in range(repeat + 1):
            wall, prompts = await one_run(settings)
            base = await baseline(script, prompts)
            if i == 0:
                continue  # warm-up: imports, connection pool, first migration check
            walls.append(wall)
            bases.append(base)
    wall = statistics.median(walls)
    base = statistics.median(bases)
    per_task_ms = (wall - base) / len(deps) * 1000
    report(
        "engine_overhead",
        {
            "tasks": len(deps),
            "runs": repeat,
            "pipeline_wall_s_median": round(wall, 4),
            "baseline_llm_only_s_median": round(base, 4),
            "engine_ms_per_task": round(per_task_ms, 2),
            "target_ms_per_task": 20,
            "peak_rss_mib": round(peak_rss_mib(), 1),
            "rss_growth_mib": round(peak_rss_mib() - rss_start, 1),
            "machine": machine(),
        },
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    asyncio.run(main(args.tasks, args.repeat))
