"""`qlp worker` (run intents from the job queue until SIGTERM) and `qlp workers` (who runs
what, from the database: the health command)."""

from __future__ import annotations

import asyncio
import signal
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import text

from qlp.cli.common import console, err_console, print_json
from qlp.config import Settings

# Each registered worker, its last heartbeat, and the intents it runs now.
_WORKERS = text(
    "SELECT w.id, w.last_heartbeat, count(j.id) AS running, "
    "coalesce(array_agg(j.lock) FILTER (WHERE j.id IS NOT NULL), '{}') AS intents "
    "FROM procrastinate_workers w "
    "LEFT JOIN procrastinate_jobs j ON j.worker_id = w.id AND j.status = 'doing' "
    "GROUP BY w.id ORDER BY w.id"
)


def run_worker(cfg: Settings, concurrency: int | None) -> int:
    return asyncio.run(_serve(cfg, concurrency or cfg.server_max_running))


async def _serve(cfg: Settings, concurrency: int) -> int:
    from qlp.api.server import describe  # the same words as `qlp serve`'s ready lines
    from qlp.engine.runner import IntentRunner
    from qlp.engine.wiring import open_runtime

    async with open_runtime(cfg) as rt:
        runner = IntentRunner(
            rt.pipeline(need_llm=False),
            rt.database_url,
            max_running=concurrency,
            max_active_per_user=cfg.user_max_active_intents,
            queue=cfg.job_queue,
            stall_s=cfg.worker_stall_s,
        )
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        try:
            await runner.start()
            details = describe(cfg, ("-", 0)).details
            console.print(
                f"qlp worker: running up to {concurrency} intents at once",
                markup=False,
                highlight=False,
                soft_wrap=True,
            )
            for label, value in details:
                if label != "worker":
                    console.print(f"  {label}  {value}", markup=False, highlight=False)
            served = asyncio.ensure_future(runner.serve_jobs())
            stopped = asyncio.ensure_future(stop.wait())
            await asyncio.wait({served, stopped}, return_when=asyncio.FIRST_COMPLETED)
            stopped.cancel()
            failed = served.done() and not stop.is_set()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
            # Running intents keep their state and get a new job (another worker takes it).
            await runner.stop()
    if failed:
        err_console.print("error: the worker stopped on its own; see the log (--debug)")
        return 1
    console.print("qlp worker: stopped", highlight=False)
    return 0


def list_workers(cfg: Settings, as_json: bool) -> int:
    return asyncio.run(_list(cfg, as_json))


async def _list(cfg: Settings, as_json: bool) -> int:
    from qlp.engine.wiring import open_runtime

    async with open_runtime(cfg) as rt, rt.store.engine.connect() as conn:
        rows = (await conn.execute(_WORKERS)).all()
    now = datetime.now(UTC)
    found: list[dict[str, Any]] = []
    for row in rows:
        age = (now - row.last_heartbeat).total_seconds()
        found.append(
            {
                "id": int(row.id),
                "heartbeat_age_s": round(age, 1),
                "alive": age <= cfg.worker_stall_s,
                "running": int(row.running),
                "intents": sorted(str(i) for i in row.intents),
            }
        )
    alive = [w for w in found if w["alive"]]
    if as_json:
        print_json({"workers": found, "alive": len(alive)})
    elif not found:
        console.print("no workers: start one with `qlp worker` (or `qlp serve`)")
    else:
        for w in found:
            state = "alive" if w["alive"] else f"silent for {w['heartbeat_age_s']:.0f} s"
            running = ", ".join(w["intents"]) or "nothing"
            console.print(
                f"worker {w['id']}: {state}; running {running}", markup=False, highlight=False
            )
    return 0 if alive else 1
