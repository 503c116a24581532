"""Parallel efficiency: DAGs of width 1, 4 and 16 with a model that takes 200 ms a call.

    .venv/bin/python -m bench.parallel_efficiency [--latency 0.2] [--depth 3] [--repeat 5]

The model is the fake OpenAI server on 127.0.0.1 (the real SDK client talks HTTP to it),
run in a process of its own so its work does not compete with the engine for the GIL.
Each DAG is `depth` layers of `width` chains; QLP_MAX_PARALLEL_TASKS = width. The ideal
wall time (the baseline) is the critical path: (1 planner call + depth task calls) x latency.
Efficiency ratio = measured wall time / ideal; target <= 1.15.

A second baseline, measured in the same run, makes the same calls (one, then `depth` waves
of `width` at once) straight through the OpenAI SDK to the same kind of server, with no
engine: `engine_ratio` = QLP wall time / that time isolates what QLP itself adds.

Each width is measured `repeat` times (QLP and the SDK baseline alternating, so both see the
same machine load); the ratios reported are the medians, with the best and all runs beside.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any

from tests.fakes.llm_server import FakeLLMServer

from bench._common import layered_dag, machine, private_postgres, report, script_for
from qlp.config import Settings
from qlp.domain.states import IntentStatus
from qlp.engine.wiring import open_runtime
from qlp.llm.base import LLMRequest, Message
from qlp.llm.openai_compat import OpenAICompatClient
from qlp.llm.retry import RetryPolicy


def _serve(script: dict[str, Any], latency: float, conn: Connection, stop: Event) -> None:
    with FakeLLMServer(script, latency_s=latency) as server:
        conn.send(server.base_url)
        stop.wait()


@contextmanager
def server_process(script: dict[str, Any], latency: float) -> Iterator[str]:
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    stop = ctx.Event()
    proc = ctx.Process(target=_serve, args=(script, latency, child, stop), daemon=True)
    proc.start()
    try:
        if not parent.poll(30):
            raise RuntimeError("the fake LLM server process did not start")
        yield str(parent.recv())
    finally:
        stop.set()
        proc.join(10)


async def measure(url: str, home: Path, width: int, depth: int, latency: float) -> float:
    deps = layered_dag(width, depth)
    with server_process(script_for(deps), latency) as base_url:
        settings = Settings(
            home=home,
            database_url=url,
            llm_provider="openai",
            llm_model="gpt-4o-mini",
            llm_base_url=base_url,
            openai_api_key="bench",
            max_parallel_tasks=width,
            max_tasks_per_plan=len(deps),
            validation_enabled=False,  # the engine alone: no sandbox checks
        )
        async with open_runtime(settings) as rt:
            pipeline = rt.pipeline()
            intent = await pipeline.submit(f"width {width}")
            started = time.perf_counter()
            final = await pipeline.run(intent.id)
            wall = time.perf_counter() - started
    assert final.status == IntentStatus.COMPLETED, final.error
    return wall


async def sdk_only(width: int, depth: int, latency: float) -> float:
    answer = {"content": json.dumps({"files": [{"path": "a.txt", "content": "x\\n"}]})}
    with server_process({"responses": [answer] * (1 + width * depth)}, latency) as base_url:
        client = OpenAICompatClient(
            model="gpt-4o-mini",
            api_key="bench",
            base_url=base_url,
            timeout_s=30,
            retry=RetryPolicy(max_retries=0),
            prices={},
        )
        request = LLMRequest(messages=(Message("user", "Your task: baseline " + "x" * 2000),))
        started = time.perf_counter()
        await client.complete(request)
        for _ in range(depth):
            await asyncio.gather(*(client.complete(request) for _ in range(width)))
        wall = time.perf_counter() - started
        await client.aclose()
    return wall


async def main(latency: float, depth: int, widths: list[int], repeat: int) -> None:
    rows = []
    with private_postgres() as (url, home):
        await measure(url, home, 2, 1, 0.0)  # warm-up
        for width in widths:
            walls, directs = [], []
            for _ in range(repeat):
                walls.append(await measure(url, home, width, depth, latency))
                directs.append(await sdk_only(width, depth, latency))
            wall, direct = statistics.median(walls), statistics.median(directs)
            ideal = (1 + depth) * latency
            rows.append(
                {
                    "width": width,
                    "tasks": width * depth,
                    "max_parallel": width,
                    "runs": repeat,
                    "wall_s": round(wall, 3),
                    "critical_path_s": round(ideal, 3),
                    "ratio": round(wall / ideal, 3),
                    "ratio_best": round(min(walls) / ideal, 3),
                    "ratio_worst": round(max(walls) / ideal, 3),
                    "ratios": [round(w / ideal, 3) for w in walls],
                    "target_ratio": 1.15,
                    "sdk_only_wall_s": round(direct, 3),
                    "sdk_only_ratio": round(direct / ideal, 3),
                    "sdk_only_ratios": [round(d / ideal, 3) for d in directs],
                    "engine_ratio": round(wall / direct, 3),
                }
            )
    report(
        "parallel_efficiency",
        {
            "latency_s": latency,
            "depth": depth,
            "repeat": repeat,
            "results": rows,
            "machine": machine(),
            "load_average": list(os.getloadavg()),
        },
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency", type=float, default=0.2)
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--widths", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--repeat", type=int, default=5, help="runs per width (median reported)")
    args = parser.parse_args()
    asyncio.run(main(args.latency, args.depth, args.widths, args.repeat))
