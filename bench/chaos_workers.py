"""Chaos: a 12-task intent across 3 workers, one worker SIGKILLed or SIGSTOPped at a random
moment in every run; what must hold, checked against the database (issue 12).

    .venv/bin/python -m bench.chaos_workers [--runs 50] [--stall 6] [--latency 1.0] [--seed N]

Processes, all on 127.0.0.1 and one private PostgreSQL: the fake OpenAI server (its own
process, every answer after `--latency` s), API replica A (`qlp serve --no-worker`) that
takes the submissions, API replica B (another `qlp serve --no-worker`, its own port) that
serves the WebSocket subscriber, and 3 `qlp worker --concurrency 2`. One job queue
(QLP_JOB_QUEUE) unique to this run of the benchmark; QLP_WORKER_STALL_S = `--stall` (the
heartbeat and the sweep are a quarter of it).

Each run submits one intent on A (plan: 3 layers of 4 chains, 12 tasks, 4 at a time),
subscribes to its stream on B (`after=0`), and at a moment drawn uniformly from the first
85 % of the intent's expected duration picks the worker that holds the intent's job
(procrastinate_jobs.worker_id, mapped to the process that registered it) and either
- SIGKILLs it (and starts a new worker in its place at once), or
- SIGSTOPs it and SIGCONTs it `--stall` x 1.5-3 s later, i.e. after another worker should
  have taken over: the zombie's writes after it wakes must be refused (lease fencing).

Then it waits for the intent to end (and a little more, for a woken zombie's writes) and
checks:
- the intent completed;
- every task succeeded exactly once (one task.succeeded each) and no task started again
  after it had succeeded; task.started per task is reported (an interrupted task starts
  twice);
- every task's files were committed once: one task.output event per task and one files row
  per path, written by that task;
- the subscriber on B received seqs 1..N exactly as the events table has them: contiguous,
  no gap, no duplicate (events committed after the intent's final event, which a stream
  closed on that event cannot show, are reported on their own);
- no job of the intent is left `doing`; at the end, none of the queue is;
- takeover time: from the fault to the first event of the intent committed by another
  worker (for a SIGKILL: the first event stamped after it; for a SIGSTOP: the first stamped
  after it and before the SIGCONT), with p50 / p90 / max.

The JSON (bench/results/chaos_workers.json) has the totals, every run, and each violated
invariant with its run; the command exits 1 if any invariant was violated.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import secrets
import shutil
import signal
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.api_support import ApiServer, server_env
from tests.support import PLAN_WHEN, files_answer, plan_answer, plan_task, task_when
from websockets.exceptions import ConnectionClosed

from bench._common import layered_dag, machine, private_postgres, report
from bench.api_common import PASSWORD, fake_llm, load, percentile
from bench.workers_common import Db, Worker
from qlp.config import Settings

WIDTH, DEPTH = 4, 3  # 12 tasks
WORKERS = 3
CONCURRENCY = 2
TERMINAL = {"completed", "failed", "cancelled", "rejected"}


def script(deps: dict[str, list[str]], copies: int) -> list[dict[str, Any]]:
    plan = {"when": PLAN_WHEN, "content": plan_answer(plan_task(t, d) for t, d in deps.items())}
    answers = [
        {"when": task_when(t), "content": files_answer({f"{t}.txt": f"content of {t}\n"})}
        for t in deps
    ]
    return [plan, *answers] * copies


@dataclass
class Subscriber:
    """One WebSocket stream of an intent on replica B, read in a thread."""

    server: ApiServer
    token: str
    intent_id: str
    seqs: list[int] = field(default_factory=list)
    types: list[str] = field(default_factory=list)
    error: str | None = None
    close_code: int | None = None
    thread: threading.Thread | None = None

    def start(self) -> Subscriber:
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()
        return self

    def _read(self) -> None:
        try:
            with self.server.stream(self.intent_id, self.token, after=0) as ws:
                try:
                    while True:
                        message = json.loads(ws.recv(timeout=300))
                        if message.get("event") == "intent":
                            self.seqs.append(int(message["seq"]))
                            self.types.append(str(message["type"]))
                except ConnectionClosed as closed:
                    self.close_code = closed.rcvd.code if closed.rcvd else None
        except Exception as exc:  # reported, not raised: the run's checks say what it means
            self.error = f"{type(exc).__name__}: {exc}"

    def join(self, timeout: float) -> bool:
        assert self.thread is not None
        self.thread.join(timeout)
        return not self.thread.is_alive()


class Cluster:
    """The 3 workers, and which procrastinate worker id each registered."""

    def __init__(self, env: dict[str, str], cwd: Path, db: Db) -> None:
        self.env, self.cwd, self.db = env, cwd, db
        self.workers: list[Worker] = []
        self.ids: dict[int, Worker] = {}
        self.started = 0
        self.exits: list[dict[str, Any]] = []

    def add(self) -> Worker:
        before = self.db.worker_ids()
        self.started += 1
        worker = Worker(self.env, self.cwd, f"w{self.started}", CONCURRENCY).start()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            new = self.db.worker_ids() - before
            if new:
                for worker_id in new:
                    self.ids[worker_id] = worker
                break
            time.sleep(0.05)
        self.workers.append(worker)
        return worker

    def replace(self, dead: Worker) -> Worker:
        if dead in self.workers:
            self.workers.remove(dead)
        return self.add()

    def holder(self, queue: str, intent_id: str) -> tuple[Worker | None, int | None]:
        """The live worker process working on the intent: the one whose pid its live lease
        names (`lease_holder` = host:pid:nonce), else the one that registered the
        procrastinate worker of its running job."""
        holder = self.db.one(
            "SELECT lease_holder FROM intents WHERE id = %s AND lease_until > now()",
            (intent_id,),
        )
        pid = int(str(holder).split(":")[1]) if holder else None
        for _job, lock, worker_id in self.db.jobs(queue, "doing"):
            if lock == intent_id:
                by_pid = [w for w in self.workers if w.proc is not None and w.proc.pid == pid]
                if by_pid:
                    return by_pid[0], worker_id
                mapped = self.ids.get(worker_id) if worker_id is not None else None
                return (mapped if mapped in self.workers else None), worker_id
        return None, None

    def check_alive(self, run: int) -> None:
        """A worker that exited on its own (not by this benchmark's SIGKILL) is recorded
        and replaced."""
        for w in list(self.workers):
            if not w.alive():
                assert w.proc is not None
                text = w.log.read_text()
                # The lines that say what happened (the log is kept, see main()).
                said = [
                    line.strip()
                    for line in text.splitlines()
                    if any(k in line for k in ("Error", "error", "DETAIL", "warning", "stopped"))
                ]
                self.exits.append(
                    {"run": run, "worker": w.name, "code": w.proc.returncode, "said": said[-12:]}
                )
                self.replace(w)

    def stop(self) -> None:
        for w in self.workers:
            w.stop()


def expected_duration(latency: float) -> float:
    return (1 + DEPTH) * latency + 0.5


def one_run(
    n: int,
    rng: random.Random,
    a: ApiServer,
    b: ApiServer,
    token_a: str,
    token_b: str,
    cluster: Cluster,
    db: Db,
    queue: str,
    deps: dict[str, list[str]],
    stall: float,
    latency: float,
) -> dict[str, Any]:
    kind = rng.choice(["kill", "stop"])
    delay = rng.uniform(0.3, 0.85 * expected_duration(latency))
    with a.client(token_a) as c:
        r = c.post("/intents", json={"text": f"chaos run {n}"})
    if r.status_code != 202:
        raise RuntimeError(f"submit answered {r.status_code}: {r.text}")
    submitted = time.time()
    intent_id = str(r.json()["id"])
    sub = Subscriber(b, token_b, intent_id).start()
    time.sleep(max(0.0, submitted + delay - time.time()))

    victim, _worker_id = cluster.holder(queue, intent_id)
    held = victim is not None
    if victim is None:  # between jobs, or not mapped: a random worker (reported)
        victim = rng.choice(cluster.workers)
    fault_at = time.time()
    status_at_fault = db.intent_status(intent_id)
    resumed_at: float | None = None
    if kind == "kill":
        victim.signal(signal.SIGKILL)
        assert victim.proc is not None
        victim.proc.wait(30)
        cluster.replace(victim)
    else:
        victim.signal(signal.SIGSTOP)
        stop_for = stall * rng.uniform(1.5, 3.0)

    deadline = time.monotonic() + 120 + 4 * stall
    status = db.intent_status(intent_id)
    while time.monotonic() < deadline:
        if kind == "stop" and resumed_at is None and time.time() >= fault_at + stop_for:
            resumed_at = time.time()  # before the signal: the woken zombie stamps at once
            victim.signal(signal.SIGCONT)
        status = db.intent_status(intent_id)
        if status in TERMINAL and (kind == "kill" or resumed_at is not None):
            break
        time.sleep(0.1)
    if kind == "stop" and resumed_at is None:
        resumed_at = time.time()
        victim.signal(signal.SIGCONT)
    # A woken zombie gets time to try its writes (a model call in flight, then a commit).
    if kind == "stop":
        time.sleep(max(0.0, (resumed_at or 0) + 2 * latency + 1.5 - time.time()))
    sub_done = sub.join(30)
    job_deadline = time.monotonic() + 2 * stall + 5
    while time.monotonic() < job_deadline and cluster.holder(queue, intent_id)[1] is not None:
        time.sleep(0.1)
    left_doing = [j for j in db.jobs(queue, "doing") if j[1] == intent_id]
    cluster.check_alive(n)

    events = db.events(intent_id)
    files = db.files(intent_id)
    status = db.intent_status(intent_id)
    error = db.one("SELECT error FROM intents WHERE id = %s", (intent_id,))
    # The lease epoch (store/leases.py): 1 = the first holder kept it all along.
    epoch = db.one("SELECT lease FROM intents WHERE id = %s", (intent_id,))
    seqs = [s for s, _t, _a, _p in events]
    final_index = next(
        (
            i
            for i, (_s, t, _a, _p) in enumerate(events)
            if t.startswith("intent.") and t.split(".")[1] in TERMINAL
        ),
        None,
    )
    after_final = (
        [(s, t) for s, t, _a, _p in events[final_index + 1 :]] if final_index is not None else []
    )
    succeeded = Counter(str(p.get("task_id")) for _s, t, _a, p in events if t == "task.succeeded")
    started = Counter(str(p.get("task_id")) for _s, t, _a, p in events if t == "task.started")
    outputs = Counter(str(p.get("task_id")) for _s, t, _a, p in events if t == "task.output")
    conflicts = [p for _s, t, _a, p in events if t == "file.conflict"]
    rerun_after_success = []
    done: set[str] = set()
    for s, t, _a, p in events:
        task = str(p.get("task_id"))
        if t == "task.succeeded":
            done.add(task)
        elif t == "task.started" and task in done:
            rerun_after_success.append({"task": task, "seq": s})
    expected_files = {f"{t}.txt": t for t in deps}
    file_rows = Counter(path for path, _t, _h in files)
    files_ok = {path: task for path, task, _h in files} == expected_files and all(
        v == 1 for v in file_rows.values()
    )

    # Takeover: the first event stamped after the fault (before the SIGCONT for a stop).
    takeover = None
    takeover_event = None
    for _s, t, at, _p in events:
        if at > fault_at:
            if kind == "stop" and resumed_at is not None and at >= resumed_at:
                break
            takeover, takeover_event = at - fault_at, t
            break
    received_ok = sub.seqs == seqs[: len(sub.seqs)] and sub.seqs == list(
        range(1, len(sub.seqs) + 1)
    )
    ws_complete = received_ok and len(sub.seqs) == len(seqs) - len(after_final)
    problems = []
    if status != "completed":
        last = [t for _s, t, _a, _p in events[-4:]]
        problems.append(f"intent ended {status} ({error}); its last events {last}")
    if set(succeeded) != set(deps) or any(v != 1 for v in succeeded.values()):
        problems.append(f"task.succeeded per task: {dict(succeeded)}")
    if rerun_after_success:
        problems.append(f"succeeded tasks started again: {rerun_after_success}")
    if set(outputs) != set(deps) or any(v != 1 for v in outputs.values()):
        problems.append(f"task.output per task: {dict(outputs)}")
    if not files_ok:
        problems.append(f"files rows: {files}")
    if seqs != list(range(1, len(seqs) + 1)):
        problems.append(f"events table seqs not contiguous: {seqs}")
    if not ws_complete:
        problems.append(
            f"subscriber on B got {sub.seqs} (error {sub.error}, closed {sub.close_code}, "
            f"done {sub_done}); table has 1..{len(seqs)}"
        )
    if after_final:
        problems.append(f"events after the final event: {after_final}")
    if left_doing:
        problems.append(f"jobs left doing: {left_doing}")
    return {
        "run": n,
        "intent_id": intent_id,
        "fault": kind,
        "fault_after_submit_s": round(fault_at - submitted, 2),
        "status_at_fault": status_at_fault,
        "victim": victim.name,
        "victim_held_the_job": held,
        "stopped_for_s": round(resumed_at - fault_at, 2) if resumed_at and kind == "stop" else None,
        "status": status,
        "events": len(seqs),
        "received_on_b": len(sub.seqs),
        "takeover_s": round(takeover, 2) if takeover is not None else None,
        "takeover_event": takeover_event,
        "lease_epoch": epoch,
        "tasks_started_twice": sorted(t for t, c in started.items() if c > 1),
        "file_conflicts": len(conflicts),
        "wall_s": round(time.time() - submitted, 2),
        "problems": problems,
    }


def summarize(takeovers: list[float]) -> dict[str, float | int | None]:
    if not takeovers:
        return {"n": 0, "p50_s": None, "p90_s": None, "max_s": None}
    return {
        "n": len(takeovers),
        "p50_s": round(percentile(takeovers, 50), 2),
        "p90_s": round(percentile(takeovers, 90), 2),
        "max_s": round(max(takeovers), 2),
        "min_s": round(min(takeovers), 2),
    }


def main(runs: int, stall: float, latency: float, seed: int) -> int:
    if "worker_stall_s" not in Settings.model_fields:
        raise SystemExit("this QLP has no QLP_WORKER_STALL_S (Settings.worker_stall_s)")
    rng = random.Random(seed)
    deps = layered_dag(WIDTH, DEPTH)
    queue = f"bench-chaos-{secrets.token_hex(4)}"
    started = time.time()
    results: list[dict[str, Any]] = []
    with (
        private_postgres() as (url, home),
        fake_llm({"responses": script(deps, 2 * runs + 5)}, latency) as (llm_url, _llm_pid),
    ):
        env = server_env(
            home,
            url,
            llm_url,
            QLP_JOB_QUEUE=queue,
            QLP_WORKER_STALL_S=str(stall),
            QLP_MAX_PARALLEL_TASKS=str(WIDTH),
            QLP_LLM_TIMEOUT_S="60",
            QLP_USER_MAX_ACTIVE_INTENTS="100000",
            QLP_SUBMIT_RATE_PER_MINUTE="100000",
        )
        a = ApiServer(env, cwd=home, args=("--no-worker",))
        b = ApiServer(env, cwd=home, args=("--no-worker",))
        a.create_users(PASSWORD, {"ann": "member"})
        db = Db(url)
        cluster = Cluster(env, home, db)
        try:
            a.start()
            b.start()
            for _ in range(WORKERS):
                cluster.add()
            token_a, token_b = a.token("ann", PASSWORD), b.token("ann", PASSWORD)
            for n in range(1, runs + 1):
                if n % 40 == 0:  # access tokens live 15 minutes
                    token_a, token_b = a.token("ann", PASSWORD), b.token("ann", PASSWORD)
                result = one_run(
                    n, rng, a, b, token_a, token_b, cluster, db, queue, deps, stall, latency
                )
                results.append(result)
                print(
                    f"run {n}: {result['fault']} at {result['fault_after_submit_s']} s "
                    f"({result['status_at_fault']}), takeover {result['takeover_s']} s, "
                    f"{result['status']}, problems: {result['problems'] or 'none'}",
                    flush=True,
                )
            time.sleep(1)
            queue_left_doing = db.jobs(queue, "doing")
        finally:
            logs = Path(tempfile.gettempdir()) / f"qlp-{queue}-logs"
            logs.mkdir(exist_ok=True)
            for log in home.glob("*.log"):
                shutil.copy(log, logs / log.name)
            cluster.stop()
            for server in (a, b):
                with contextlib.suppress(AssertionError):
                    server.stop()
            db.close()

    kills = [
        r["takeover_s"] for r in results if r["fault"] == "kill" and r["takeover_s"] is not None
    ]
    stops = [
        r["takeover_s"] for r in results if r["fault"] == "stop" and r["takeover_s"] is not None
    ]
    violations = [{"run": r["run"], "problems": r["problems"]} for r in results if r["problems"]]
    data = {
        "settings": {
            "runs": runs,
            "worker_stall_s": stall,
            "heartbeat_and_sweep_s": stall / 4,
            "model_latency_s": latency,
            "plan": f"{DEPTH} layers of {WIDTH} chains ({WIDTH * DEPTH} tasks)",
            "max_parallel_tasks": WIDTH,
            "workers": WORKERS,
            "worker_concurrency": CONCURRENCY,
            "seed": seed,
            "queue": queue,
        },
        "completed": f"{sum(r['status'] == 'completed' for r in results)} of {runs}",
        "faults": dict(Counter(r["fault"] for r in results)),
        "faults_on_the_job_holder": sum(r["victim_held_the_job"] for r in results),
        "runs_without_problems": sum(not r["problems"] for r in results),
        "succeeded_task_re_run": sum(
            any("started again" in p for p in r["problems"]) for r in results
        ),
        "files_or_outputs_not_once": sum(
            any(p.startswith(("task.output", "files rows")) for p in r["problems"]) for r in results
        ),
        "subscriber_mismatch": sum(
            any(p.startswith("subscriber") for p in r["problems"]) for r in results
        ),
        "jobs_left_doing_at_end": len(queue_left_doing),
        "takeover_after_sigkill": summarize(kills),
        "takeover_while_sigstopped": summarize(stops),
        "stops_without_takeover_before_sigcont": sum(
            1 for r in results if r["fault"] == "stop" and r["takeover_s"] is None
        ),
        "tasks_started_twice_total": sum(len(r["tasks_started_twice"]) for r in results),
        "worker_exits_not_by_the_benchmark": cluster.exits,
        "violations": violations,
        "process_logs": str(logs),
        "runs": results,
        "wall_s": round(time.time() - started, 1),
        "load_avg_after": load(),
        "machine": machine(),
    }
    report("chaos_workers", data)
    return 1 if violations or queue_left_doing else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--stall", type=float, default=6.0, help="QLP_WORKER_STALL_S")
    parser.add_argument("--latency", type=float, default=1.0, help="model answer delay, s")
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else secrets.randbelow(2**31)
    raise SystemExit(main(args.runs, args.stall, args.latency, seed))
