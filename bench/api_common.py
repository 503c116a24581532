"""What the service benchmarks share: a real `qlp serve` process on 127.0.0.1 with its own
embedded PostgreSQL and a fake model in a process of its own, plus CPU accounting of each of
those processes from /proc (so a result can say which one was the bottleneck)."""

from __future__ import annotations

import multiprocessing
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any

from tests.api_support import ApiServer, running, server_env
from tests.fakes.llm_server import FakeLLMServer
from tests.support import PLAN_WHEN, files_answer, plan_answer, plan_task, task_when

from bench._common import private_postgres, private_postgres_pids

PASSWORD = "correct horse battery"
_TICK = os.sysconf("SC_CLK_TCK")


def _serve_llm(script: dict[str, Any], latency: float, conn: Connection, stop: Event) -> None:
    with FakeLLMServer(script, latency_s=latency) as server:
        conn.send(server.base_url)
        stop.wait()


@contextmanager
def fake_llm(script: dict[str, Any], latency: float = 0.0) -> Iterator[tuple[str, int]]:
    """The fake OpenAI server in its own process: (base URL, pid)."""
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    stop = ctx.Event()
    proc = ctx.Process(target=_serve_llm, args=(script, latency, child, stop), daemon=True)
    proc.start()
    try:
        if not parent.poll(60):
            raise RuntimeError("the fake LLM server process did not start")
        assert proc.pid is not None
        yield str(parent.recv()), proc.pid
    finally:
        stop.set()
        proc.join(10)


@dataclass
class Service:
    server: ApiServer
    home: Path
    llm_pid: int

    @property
    def base(self) -> str:
        return self.server.base

    @property
    def server_pid(self) -> int:
        assert self.server.proc is not None
        return self.server.proc.pid

    def cpu(self) -> dict[str, float]:
        """CPU seconds used so far by the server (`qlp serve` and, with --workers N, its API
        processes), PostgreSQL (all its processes), the fake model's process, and by the
        whole machine (all processes, all cores)."""
        postgres = 0.0
        for i, pid in enumerate(private_postgres_pids(self.home)):
            postgres += _cpu_seconds(pid, children=i == 0)  # the postmaster reaps backends
        return {
            "server": sum(server_cpu(self.server_pid).values()),
            "postgres": postgres,
            "llm": _cpu_seconds(self.llm_pid),
            "machine": machine_busy_seconds(),
        }


def machine_busy_seconds() -> float:
    """CPU seconds all cores spent not idle (user, nice, system, irq, softirq, steal)."""
    with open("/proc/stat") as fh:
        fields = [int(x) for x in fh.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq + steal) / _TICK


def _parents() -> dict[int, int]:
    """pid -> parent pid of every live process."""
    found: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                found[int(entry.name)] = int(
                    (entry / "stat").read_text().rsplit(")", 1)[1].split()[1]
                )
            except (OSError, IndexError, ValueError):
                continue
    return found


def server_cpu(pid: int) -> dict[int, float]:
    """CPU seconds of a process and of each of its live descendants (the API processes of
    `qlp serve --workers N`), by pid; each also counts its reaped children, so the sum over
    an interval holds a process that ended in it."""
    parents = _parents()
    tree, todo = [pid], [pid]
    while todo:
        parent = todo.pop()
        kids = [p for p, pp in parents.items() if pp == parent]
        tree += kids
        todo += kids
    return {p: _cpu_seconds(p, children=True) for p in tree}


def _cpu_seconds(pid: int, children: bool = False) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    # After "pid (comm)": state is field 0, utime 11, stime 12, cutime 13, cstime 14.
    ticks = int(fields[11]) + int(fields[12])
    if children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / _TICK


def cpu_share(
    before: Mapping[str, float], after: Mapping[str, float], wall: float, client: float = 0.0
) -> dict[str, float]:
    """CPU used between two samples, in cores (1.0 = one core busy for all of `wall`).
    `client` is the client's own CPU seconds; `other` is what the rest of the machine used
    (other sessions' tests, the kernel, this script's parent)."""
    used = {k: (after[k] - before[k]) / wall for k in before}
    used["client"] = client / wall
    used["other"] = used["machine"] - sum(v for k, v in used.items() if k != "machine")
    return {k: round(v, 2) for k, v in used.items()}


@contextmanager
def service(
    script: Sequence[Mapping[str, Any]],
    *,
    latency: float = 0.0,
    env: Mapping[str, str] | None = None,
    users: Sequence[tuple[str, str]] = (("root", "admin"), ("ann", "member")),
    args: Sequence[str] = (),
) -> Iterator[Service]:
    """PostgreSQL, the fake model answering `script`, and `qlp serve [args]` with `users`."""
    with private_postgres() as (url, home), fake_llm({"responses": list(script)}, latency) as llm:
        base_url, llm_pid = llm
        server = ApiServer(
            server_env(home, url, base_url, **dict(env or {})), cwd=home, args=tuple(args)
        )
        server.create_users(PASSWORD, dict(users))
        with running(server):
            yield Service(server, home, llm_pid)


def plan_script(
    deps: Mapping[str, Sequence[str]], *, copies: int = 1, plan_delay: float = 0.0
) -> list[dict[str, Any]]:
    """Model answers for `copies` intents of the plan `deps`: the plan (after `plan_delay`
    seconds), then one file per task. Each task writes its own top-level file: tasks of one
    intent that run together and create the same new folder can collide on its mkdir
    (FileExistsError, seen with the working tree of this benchmark's first runs), and these
    benchmarks measure the service, not that."""
    plan: dict[str, Any] = {
        "when": PLAN_WHEN,
        "content": plan_answer(plan_task(t, d) for t, d in deps.items()),
    }
    if plan_delay:
        plan["delay_s"] = plan_delay
    tasks = [
        {"when": task_when(t), "content": files_answer({f"{t}.txt": f"content of {t}\n"})}
        for t in deps
    ]
    return [plan, *tasks] * copies


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) by nearest rank."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def ms(seconds: float) -> float:
    return round(seconds * 1000, 2)


def load() -> dict[str, float]:
    one, five, fifteen = os.getloadavg()
    return {"1m": round(one, 2), "5m": round(five, 2), "15m": round(fifteen, 2)}


def wait_until(predicate: Any, timeout: float, interval: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise TimeoutError("condition not met in time")
