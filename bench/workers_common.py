"""What the worker benchmarks share (issue 12): `qlp worker` processes beside `qlp serve`
processes on one private PostgreSQL, direct reads of the database (intents, events, files,
procrastinate's job and worker rows), and CPU seconds of processes from /proc."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from qlp.engine.jobs import conninfo

_TICK = os.sysconf("SC_CLK_TCK")


def proc_cpu(pid: int) -> tuple[float, float]:
    """(own CPU seconds, CPU seconds of its reaped children) of a live process; zeros once
    it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0, 0.0
    # After "pid (comm)": utime 11, stime 12, cutime 13, cstime 14.
    return (int(fields[11]) + int(fields[12])) / _TICK, (int(fields[13]) + int(fields[14])) / _TICK


@dataclass
class Worker:
    """One `python -m qlp worker --concurrency N` process, its output in a log file."""

    env: Mapping[str, str]
    cwd: Path
    name: str
    concurrency: int
    proc: subprocess.Popen[str] | None = None
    log: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log = self.cwd / f"worker-{self.name}.log"

    def start(self, timeout: float = 90) -> Worker:
        with self.log.open("a") as out:
            out.write(f"--- start at {time.time():.3f}\n")
            out.flush()
            offset = out.tell()
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "qlp", "worker", "--concurrency", str(self.concurrency)],
                env=dict(self.env),
                cwd=self.cwd,
                stdout=out,
                stderr=subprocess.STDOUT,
                text=True,
            )
        deadline = time.monotonic() + timeout
        while "qlp worker: running" not in self.log.read_text()[offset:]:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker {self.name} exited:\n{self.log.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"worker {self.name} did not start")
            time.sleep(0.05)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive():
            assert self.proc is not None
            self.proc.send_signal(sig)

    def stop(self, timeout: float = 60) -> int | None:
        """SIGCONT (in case it is stopped), SIGTERM, and SIGKILL if it does not exit."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


class Db:
    """A psycopg connection (autocommit) to the benchmark's database, for reading what the
    processes under test committed."""

    def __init__(self, database_url: str) -> None:
        self.conn = psycopg.connect(conninfo(database_url), autocommit=True)

    def close(self) -> None:
        self.conn.close()

    def rows(self, sql: str, params: Iterable[Any] = ()) -> list[tuple[Any, ...]]:
        with self.conn.cursor() as cur:
            cur.execute(sql, tuple(params))  # type: ignore[arg-type]
            return list(cur.fetchall())

    def one(self, sql: str, params: Iterable[Any] = ()) -> Any:
        found = self.rows(sql, params)
        return found[0][0] if found else None

    # -- intents of one queue ------------------------------------------------------------
    def status_counts(self, queue: str) -> dict[str, int]:
        return dict(
            self.rows(
                "SELECT status, count(*) FROM intents WHERE options->>'qlp.queue' = %s "
                "GROUP BY status",
                (queue,),
            )
        )

    def finish_times(self, queue: str) -> list[tuple[float, float]]:
        """(created, finished) epoch seconds of the queue's finished intents."""
        return [
            (float(c), float(f))
            for c, f in self.rows(
                "SELECT extract(epoch FROM created_at), extract(epoch FROM finished_at) "
                "FROM intents WHERE options->>'qlp.queue' = %s AND finished_at IS NOT NULL",
                (queue,),
            )
        ]

    def jobs(self, queue: str, status: str) -> list[tuple[int, str, int | None]]:
        """(job id, lock = intent id, worker id) of the queue's jobs in `status`."""
        return [
            (int(i), str(lock), w)
            for i, lock, w in self.rows(
                "SELECT id, lock, worker_id FROM procrastinate_jobs "
                "WHERE queue_name = %s AND status = %s",
                (queue, status),
            )
        ]

    def worker_ids(self) -> set[int]:
        return {int(r[0]) for r in self.rows("SELECT id FROM procrastinate_workers")}

    # -- one intent ----------------------------------------------------------------------
    def events(self, intent_id: str) -> list[tuple[int, str, float, dict[str, Any]]]:
        """(seq, type, at as epoch seconds, payload) in seq order."""
        return [
            (int(s), str(t), float(a), p)
            for s, t, a, p in self.rows(
                "SELECT seq, type, extract(epoch FROM at), payload FROM events "
                "WHERE intent_id = %s ORDER BY seq",
                (intent_id,),
            )
        ]

    def files(self, intent_id: str) -> list[tuple[str, str, str]]:
        """(path, task id, sha256) of the intent's files."""
        return [
            (str(p), str(t), str(h))
            for p, t, h in self.rows(
                "SELECT path, task_id, sha256 FROM files WHERE intent_id = %s ORDER BY path",
                (intent_id,),
            )
        ]

    def intent_status(self, intent_id: str) -> str | None:
        found = self.one("SELECT status FROM intents WHERE id = %s", (intent_id,))
        return None if found is None else str(found)


def columns(db: Db, table: str) -> set[str]:
    return {
        str(r[0])
        for r in db.rows(
            "SELECT column_name FROM information_schema.columns WHERE table_name = %s", (table,)
        )
    }


class SandboxCpu:
    """CPU seconds of the sandboxed commands that processes `owners` ran: a thread reads
    `cpuacct.usage` of their per-command cgroups (`qlp-sbx-<label>-<owner pid>-<hex>`,
    sandbox/cgroups.py, cgroup v1) every `interval` seconds and keeps the last value seen
    of each. The children's rusage does not show this CPU (the sandboxes' processes are
    not reaped by the worker), so this is how it is counted. Undercounts by at most the
    last `interval` of each command; 0 where there are no v1 cgroups."""

    ROOT = Path("/sys/fs/cgroup/cpuacct")

    def __init__(self, owners: Iterable[int], interval: float = 0.05) -> None:
        import re
        import threading

        self._pattern = re.compile(
            r"^qlp-sbx-[a-z]+-(" + "|".join(str(p) for p in owners) + r")-[0-9a-f]{8}$"
        )
        self._seen: dict[str, float] = {}
        self._interval = interval
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                names = [n for n in os.listdir(self.ROOT) if self._pattern.match(n)]
            except OSError:
                continue
            for name in names:
                try:
                    usage = int((self.ROOT / name / "cpuacct.usage").read_text()) / 1e9
                except (OSError, ValueError):
                    continue
                with self._lock:
                    if usage > self._seen.get(name, 0.0):
                        self._seen[name] = usage

    def seconds(self) -> float:
        with self._lock:
            return sum(self._seen.values())

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
