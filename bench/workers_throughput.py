"""Intents completed per minute with 1, 2 and 4 `qlp worker` processes, against the
single-process service, with validation off and on (issue 12).

    .venv/bin/python -m bench.workers_throughput [--per-slot 8] [--workers 1 2 4]
        [--validate off on] [--latency 0.5]

One private PostgreSQL and one fake OpenAI server (its own process, 127.0.0.1, every answer
after `--latency` seconds) serve every configuration of the run, in this order for each
validation mode:

- `single`: one `qlp serve` with its embedded worker (the baseline, in the same run);
- `workers-N`: one `qlp serve --no-worker` (the API, running nothing) and N `qlp worker`
  processes.

Per process the concurrency is the same: `qlp serve` runs QLP_SERVER_MAX_RUNNING = 2 intents
at once and each `qlp worker` runs `--concurrency 2`; inside an intent QLP_MAX_PARALLEL_TASKS
= 4 (the default) bounds its tasks, and the plan (3 tasks: QL-DEV-001 writes calc.py, then
QL-TST-001 writes its tests and QL-DOC-001 a README, both after it) has at most 2 ready at
once. So one process has at most 2 intents and 4 model calls in flight, and the critical
path of one intent is 3 model calls (1.5 s at 500 ms).

Each configuration gets its own job queue (QLP_JOB_QUEUE) and `--per-slot` x 2 x processes
intents, all submitted at once through the API (8 connections), so every slot has work from
the start; the run waits until all have completed (none may fail or wait for review).
Reported: completed per minute from the first submit to the last finish, and in the
steady part (from the 10th to the 90th percentile of finish times); the CPU of every process
in that steady part, in cores (server; workers; their children as rusage reports them; the
sandboxed checks, from their cgroups (bench/workers_common.py, SandboxCpu); PostgreSQL; the
fake model; the whole machine, and `other` = machine - ours: other sessions' work).

Validation on (QLP_VALIDATE=true) runs each task's checks and the project's in the sandbox
(bubblewrap), the gate (QLP_REVIEW_POLICY=auto: a project that passes is approved) and
packaging (a signed capsule). QLP_REQUIRED_CHECKS is set to the Python checks (compile,
ruff, bandit, pytest): the analysers that `scripts/setup` installs in a private environment
of the sandbox runtime (semgrep, checkov) are not required, so a runtime without them (set
QLP_SANDBOX_RUNTIME) still completes intents; the JSON records which runtime was used.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import secrets
import shutil
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
from tests.api_support import ApiServer, server_env
from tests.support import PLAN_WHEN, files_answer, plan_answer, plan_task, task_when

from bench._common import machine, private_postgres, private_postgres_pids, report
from bench.api_common import PASSWORD, fake_llm, load, machine_busy_seconds
from bench.workers_common import Db, SandboxCpu, Worker, proc_cpu

API = "/api/v1"
PER_PROCESS = 2  # QLP_SERVER_MAX_RUNNING's default, and each worker's --concurrency
PYTHON_CHECKS = "python.compile,python.ruff,python.bandit,python.pytest"
CODE = '"""Adds numbers."""\n\n\ndef add(a: int, b: int) -> int:\n    return a + b\n'
TESTS = "from calc import add\n\n\ndef test_add() -> None:\n    assert add(2, 3) == 5\n"
README = "# calc\n\nAdds numbers.\n\n```sh\npython -m pytest\n```\n"
PLAN = {
    "QL-DEV-001": ([], {"calc.py": CODE}),
    "QL-TST-001": (["QL-DEV-001"], {"test_calc.py": TESTS}),
    "QL-DOC-001": (["QL-DEV-001"], {"README.md": README}),
}


def script(copies: int) -> list[dict[str, Any]]:
    plan = {
        "when": PLAN_WHEN,
        "content": plan_answer(plan_task(t, deps) for t, (deps, _f) in PLAN.items()),
    }
    answers = [
        {"when": task_when(t), "content": files_answer(files)} for t, (_d, files) in PLAN.items()
    ]
    return [plan, *answers] * copies


def sandbox_runtime() -> str | None:
    for candidate in (os.environ.get("QLP_SANDBOX_RUNTIME"), "/opt/qlp-runtime"):
        if candidate and Path(candidate, "bin", "python").exists():
            return candidate
    return None


class Cpu:
    """CPU seconds so far of the processes of one configuration."""

    def __init__(self, home: Path, server: int, workers: Sequence[int], llm: int) -> None:
        self.home, self.server, self.workers, self.llm = home, server, list(workers), llm
        self.sandboxes = SandboxCpu([server, *workers])

    def sample(self) -> dict[str, float]:
        server_own, server_children = proc_cpu(self.server)
        own = [proc_cpu(pid) for pid in self.workers]
        postgres = 0.0
        for i, pid in enumerate(private_postgres_pids(self.home)):
            mine, reaped = proc_cpu(pid)
            postgres += mine + (reaped if i == 0 else 0.0)  # the postmaster reaps backends
        return {
            "server": server_own,
            "server_children": server_children,
            "workers": sum(o for o, _c in own),
            "worker_children": sum(c for _o, c in own),
            "postgres": postgres,
            "sandboxes": self.sandboxes.seconds(),
            "llm": proc_cpu(self.llm)[0],
            "machine": machine_busy_seconds(),
        }


def cores(a: dict[str, float], b: dict[str, float], wall: float) -> dict[str, float]:
    used = {k: (b[k] - a[k]) / wall for k in a}
    ours = sum(v for k, v in used.items() if k != "machine")
    used["ours"] = ours
    used["other"] = used["machine"] - ours
    return {k: round(v, 2) for k, v in used.items()}


@contextlib.contextmanager
def processes(
    env: dict[str, str], cwd: Path, workers: int
) -> Iterator[tuple[ApiServer, list[int]]]:
    """`qlp serve` (workers == 0: with its own worker) or `qlp serve --no-worker` and
    `workers` x `qlp worker`; yields the server and the pids that run intents."""
    server = ApiServer(env, cwd=cwd, args=("--no-worker",) if workers else ())
    started: list[Worker] = []
    server.start()
    try:
        for i in range(workers):
            started.append(Worker(env, cwd, f"{env['QLP_JOB_QUEUE']}-{i}", PER_PROCESS).start())
        assert server.proc is not None
        yield server, [w.pid for w in started] if workers else [server.proc.pid]
    finally:
        for w in started:
            w.stop()
        with contextlib.suppress(AssertionError):
            server.stop()


async def submit_all(server: ApiServer, token: str, n: int, label: str) -> float:
    headers = {"Authorization": f"Bearer {token}"}
    queue = list(range(n))
    async with httpx.AsyncClient(base_url=server.base + API, headers=headers, timeout=60) as c:

        async def one() -> None:
            while queue:
                i = queue.pop()
                r = await c.post("/intents", json={"text": f"throughput {label} {i}"})
                if r.status_code != 202:
                    raise RuntimeError(f"submit answered {r.status_code}: {r.text}")

        started = time.time()
        await asyncio.gather(*(one() for _ in range(8)))
    return started


def measure(
    env: dict[str, str], cwd: Path, db: Db, llm_pid: int, workers: int, n: int, label: str
) -> dict[str, Any]:
    queue = env["QLP_JOB_QUEUE"]
    with processes(env, cwd, workers) as (server, runners):
        assert server.proc is not None
        cpu = Cpu(cwd, server.proc.pid, runners if workers else [], llm_pid)
        token = server.token("ann", PASSWORD)
        samples = [(time.time(), cpu.sample())]
        first_submit = asyncio.run(submit_all(server, token, n, label))
        deadline = time.monotonic() + 60 + n * 30
        while True:
            counts = db.status_counts(queue)
            samples.append((time.time(), cpu.sample()))
            stuck = {s: c for s, c in counts.items() if s in ("failed", "reviewing", "rejected")}
            if stuck:
                detail = db.rows(
                    "SELECT id, status, error FROM intents WHERE options->>'qlp.queue' = %s "
                    "AND status IN ('failed', 'reviewing', 'rejected') LIMIT 3",
                    (queue,),
                )
                raise RuntimeError(f"{label}: intents did not complete: {stuck} {detail}")
            if counts.get("completed", 0) == n:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{label}: not all intents completed in time: {counts}")
            time.sleep(0.25)
        leftover = db.jobs(queue, "doing")
        cpu.sandboxes.close()
    finished = sorted(f for _c, f in db.finish_times(queue))
    latencies = sorted(f - c for c, f in db.finish_times(queue))
    wall = finished[-1] - first_submit
    lo, hi = n // 10, n - 1 - n // 10
    t_lo, t_hi = finished[lo], finished[hi]

    def at(t: float) -> dict[str, float]:
        return min(samples, key=lambda s: abs(s[0] - t))[1]

    steady_wall = max(t_hi - t_lo, 1e-6)
    everything = cores(samples[0][1], samples[-1][1], samples[-1][0] - samples[0][0])
    return {
        "config": label,
        "worker_processes": workers,
        "intent_slots": PER_PROCESS * max(workers, 1),
        "intents": n,
        "completed_per_min": round(n / wall * 60, 1),
        "steady_completed_per_min": round((hi - lo) / steady_wall * 60, 1),
        "wall_s": round(wall, 2),
        "intent_latency_p50_s": round(latencies[len(latencies) // 2], 2),
        "intent_latency_max_s": round(latencies[-1], 2),
        "steady_cpu_cores": cores(at(t_lo), at(t_hi), steady_wall),
        "whole_run_cpu_cores": everything,
        "jobs_left_doing": len(leftover),
        "load_avg_after": load(),
    }


def main(per_slot: int, workers_list: list[int], modes: list[str], latency: float) -> None:
    runtime = sandbox_runtime()
    if "on" in modes and (runtime is None or shutil.which("bwrap") is None):
        raise SystemExit(
            "validation on needs bubblewrap and a sandbox runtime (./scripts/setup, or set "
            "QLP_SANDBOX_RUNTIME to a venv with pytest, pytest-cov, ruff and bandit)"
        )
    configs = [0, *workers_list]  # 0: the single-process service
    total = sum(per_slot * PER_PROCESS * max(w, 1) for w in configs) * len(modes)
    results: list[dict[str, Any]] = []
    started = time.time()
    run_id = secrets.token_hex(3)
    with (
        private_postgres() as (url, home),
        fake_llm({"responses": script(math.ceil(total * 1.2) + 10)}, latency) as (llm_url, llm_pid),
    ):
        base = server_env(home, url, llm_url)
        ApiServer(base, cwd=home).create_users(PASSWORD, {"ann": "member"})
        db = Db(url)
        try:
            for mode in modes:
                for workers in configs:
                    label = f"validate-{mode}/" + (f"workers-{workers}" if workers else "single")
                    n = per_slot * PER_PROCESS * max(workers, 1)
                    extra = {
                        "QLP_JOB_QUEUE": f"bench-tp-{run_id}-{mode}-{workers}",
                        "QLP_VALIDATE": "true" if mode == "on" else "false",
                        "QLP_SERVER_MAX_RUNNING": str(PER_PROCESS),
                        "QLP_MAX_PARALLEL_TASKS": "4",
                        "QLP_USER_MAX_ACTIVE_INTENTS": "100000",
                        "QLP_SUBMIT_RATE_PER_MINUTE": "100000",
                        "QLP_REVIEW_POLICY": "auto",
                        "QLP_REQUIRED_CHECKS": PYTHON_CHECKS,
                        "QLP_LLM_TIMEOUT_S": "60",
                    }
                    if runtime:
                        extra["QLP_SANDBOX_RUNTIME"] = runtime
                    env = {**base, **extra}
                    result = measure(env, home, db, llm_pid, workers, n, label)
                    print(
                        f"{label}: {result['steady_completed_per_min']}/min steady, "
                        f"{result['completed_per_min']}/min overall, "
                        f"machine {result['steady_cpu_cores']['machine']} cores",
                        flush=True,
                    )
                    results.append(result)
        finally:
            db.close()
    by_mode: dict[str, Any] = {}
    for mode in modes:
        mine = [r for r in results if r["config"].startswith(f"validate-{mode}/")]
        one = next((r for r in mine if r["worker_processes"] == 1), None)
        single = mine[0]
        by_mode[mode] = {
            r["config"]: {
                "steady_per_min": r["steady_completed_per_min"],
                "speedup_vs_1_worker": round(
                    r["steady_completed_per_min"] / one["steady_completed_per_min"], 2
                )
                if one
                else None,
                "vs_single_process": round(
                    r["steady_completed_per_min"] / single["steady_completed_per_min"], 2
                ),
            }
            for r in mine
        }
    report(
        "workers_throughput",
        {
            "settings": {
                "model_latency_s": latency,
                "intents_per_slot": per_slot,
                "intents_at_once_per_process": PER_PROCESS,
                "max_parallel_tasks": 4,
                "plan": {t: deps for t, (deps, _f) in PLAN.items()},
                "required_checks_when_validating": PYTHON_CHECKS,
                "sandbox_runtime": runtime,
                "review_policy": "auto",
            },
            "summary": by_mode,
            "results": results,
            "wall_s": round(time.time() - started, 1),
            "machine": machine(),
        },
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-slot", type=int, default=8, help="intents per intent slot")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--validate", nargs="+", choices=["off", "on"], default=["off", "on"])
    parser.add_argument("--latency", type=float, default=0.5)
    args = parser.parse_args()
    main(args.per_slot, args.workers, args.validate, args.latency)
