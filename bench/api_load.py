"""Read load on the service: `GET /api/v1/intents` at 32 concurrent connections.

    .venv/bin/python -m bench.api_load [--connections 32] [--requests 3000] [--seconds 20]
                                       [--procs 1 2] [--api-processes 1 2] [--intents 30]

A real `qlp serve` on 127.0.0.1 with its own embedded PostgreSQL holds `--intents` completed
intents of the calling member; the list returns all of them (one page). It runs with each
of `--api-processes` API processes in turn (1: one uvicorn process, as `qlp serve`; N > 1:
`qlp serve --workers N`, restarted on the same database), and the server's CPU is that of
`qlp serve` and all its processes, summed (also given per process, to show the balance).
Baseline in the same run: `GET /api/v1/healthz` (no authentication, no database) at the same
concurrency, so `ratio` = healthz rps / intents rps is the cost of authentication + query +
serialisation. Each measurement is bounded by `--requests` and `--seconds`.

The client is httpx.AsyncClient with a pool of `connections` keep-alive connections, in
`procs` processes (connections split between them), so a client-bound result shows up: the
CPU each side used is reported as a fraction of one core (server process, all PostgreSQL
processes, the client processes).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import time
from collections import Counter
from multiprocessing.connection import Connection
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
    server_cpu,
    service,
)

API = "/api/v1"
DEPS: dict[str, list[str]] = {"QL-DEV-001": [], "QL-TST-002": ["QL-DEV-001"], "QL-DOC-003": []}


async def _drive(
    base: str, path: str, token: str | None, conns: int, count: int, seconds: float, start_at: float
) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    limits = httpx.Limits(max_connections=conns, max_keepalive_connections=conns)
    async with httpx.AsyncClient(base_url=base, headers=headers, limits=limits, timeout=60) as c:
        # Open the pool's connections (and warm the server) before the clock starts.
        await asyncio.gather(*(c.get(path) for _ in range(conns * 4)))
        await asyncio.sleep(max(0.0, start_at - time.time()))
        latencies: list[float] = []
        statuses: Counter[int] = Counter()
        remaining = count
        deadline = time.perf_counter() + seconds

        async def worker() -> None:
            nonlocal remaining
            while remaining > 0 and time.perf_counter() < deadline:
                remaining -= 1
                t0 = time.perf_counter()
                r = await c.get(path)
                latencies.append(time.perf_counter() - t0)
                statuses[r.status_code] += 1

        cpu0 = time.process_time()
        started = time.time()
        await asyncio.gather(*(worker() for _ in range(conns)))
        ended = time.time()
        cpu = time.process_time() - cpu0
    return {
        "latencies": latencies,
        "statuses": dict(statuses),
        "started": started,
        "ended": ended,
        "cpu": cpu,
    }


def _client(args: tuple[Any, ...], conn: Connection) -> None:
    conn.send(asyncio.run(_drive(*args)))


def measure(
    svc: Service, path: str, token: str | None, conns: int, count: int, seconds: float, procs: int
) -> dict[str, Any]:
    ctx = multiprocessing.get_context("spawn")
    start_at = time.time() + 3.0  # all clients spawned, imported and connected by then
    workers = []
    for i in range(procs):
        share = conns // procs + (1 if i < conns % procs else 0)
        n = count // procs + (1 if i < count % procs else 0)
        parent, child = ctx.Pipe()
        args = (svc.base, API + path, token, share, n, seconds, start_at)
        proc = ctx.Process(target=_client, args=(args, child), daemon=True)
        proc.start()
        workers.append((proc, parent))
    time.sleep(max(0.0, start_at - time.time()))
    tree0 = server_cpu(svc.server_pid)
    cpu0, t0 = svc.cpu(), time.time()
    results = [parent.recv() for _, parent in workers]
    cpu1, t1 = svc.cpu(), time.time()
    tree1 = server_cpu(svc.server_pid)
    for proc, _ in workers:
        proc.join(10)
    wall = max(r["ended"] for r in results) - min(r["started"] for r in results)
    latencies = [x for r in results for x in r["latencies"]]
    statuses: Counter[int] = Counter()
    for r in results:
        statuses.update({int(k): v for k, v in r["statuses"].items()})
    assert set(statuses) == {200}, statuses
    cpu = cpu_share(cpu0, cpu1, t1 - t0, client=sum(r["cpu"] for r in results))
    return {
        "requests": len(latencies),
        "wall_s": round(wall, 2),
        "rps": round(len(latencies) / wall, 1),
        "p50_ms": ms(percentile(latencies, 50)),
        "p99_ms": ms(percentile(latencies, 99)),
        "cpu_cores": cpu,
        # Load-independent: server CPU per request (the machine is shared).
        "server_cpu_ms_per_request": round(
            (cpu1["server"] - cpu0["server"]) * 1000 / len(latencies), 3
        ),
        "client_cpu_ms_per_request": round(
            sum(r["cpu"] for r in results) * 1000 / len(latencies), 3
        ),
        "server_cpu_s_by_process": {
            str(pid): round(after - tree0.get(pid, 0.0), 2) for pid, after in tree1.items()
        },
    }


def seed(svc: Service, token: str, n: int) -> None:
    with httpx.Client(base_url=svc.base + API, headers={"Authorization": f"Bearer {token}"}) as c:
        for i in range(n):
            r = c.post("/intents", json={"text": f"seed intent {i}"})
            assert r.status_code == 202, r.text
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            page = c.get("/intents", params={"limit": 200}).json()["items"]
            if sum(i["status"] == "completed" for i in page) == n:
                return
            assert not [i for i in page if i["status"] == "failed"], page
            time.sleep(0.2)
    raise TimeoutError("seed intents did not complete")


def _serve_args(api_processes: int) -> tuple[str, ...]:
    return () if api_processes == 1 else ("--workers", str(api_processes))


def main(
    conns: int,
    count: int,
    seconds: float,
    procs_list: list[int],
    intents: int,
    api_list: list[int],
) -> None:
    env = {"QLP_USER_MAX_ACTIVE_INTENTS": "1000", "QLP_SUBMIT_RATE_PER_MINUTE": "10000"}
    args = _serve_args(api_list[0])
    with service(plan_script(DEPS, copies=intents), env=env, args=args) as svc:
        token = svc.server.token("ann", PASSWORD)
        seed(svc, token, intents)
        runs = []
        for api_processes in api_list:
            if _serve_args(api_processes) != svc.server.args:
                svc.server.stop()
                svc.server.args = _serve_args(api_processes)
                svc.server.start()
            for procs in procs_list:
                health = measure(svc, "/healthz", None, conns, count, seconds, procs)
                listed = measure(
                    svc, f"/intents?limit={intents}", token, conns, count, seconds, procs
                )
                runs.append(
                    {
                        "api_processes": api_processes,
                        "client_processes": procs,
                        "healthz": health,
                        "intents": listed,
                        "ratio_rps_healthz_over_intents": round(health["rps"] / listed["rps"], 2),
                        "ratio_rps_intents_over_healthz": round(listed["rps"] / health["rps"], 2),
                    }
                )
    report(
        "api_load",
        {
            "connections": conns,
            "max_requests": count,
            "max_seconds": seconds,
            "intents_listed": intents,
            "runs": runs,
            "load_avg_after": load(),
            "machine": machine(),
        },
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--procs", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--api-processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--intents", type=int, default=30)
    args = parser.parse_args()
    main(
        args.connections,
        args.requests,
        args.seconds,
        args.procs,
        args.intents,
        args.api_processes,
    )
