"""Scale-out (issue 12) with real processes on one database: an API replica that runs
nothing (`qlp serve --no-worker`) and `qlp worker` processes that run its intents; a cancel
reaches the worker that runs the intent; a worker killed mid-intent is taken over by
another (after its heartbeat goes silent) without re-running a task that succeeded; a
worker stopped with SIGTERM hands its intent back at once; a worker paused (SIGSTOP) long
enough to be taken over writes nothing once it continues (its lease is gone) and keeps
serving; `qlp workers` says who is alive."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.api_support import ApiServer, qlp_workers, running, server_env
from tests.fakes.llm_server import FakeLLMServer
from tests.support import dag_script

PASSWORD = "correct horse battery"
CHAIN = {"QL-DEV-001": [], "QL-DEV-002": ["QL-DEV-001"], "QL-DOC-003": ["QL-DEV-002"]}


class Worker:
    def __init__(self, env: dict[str, str], cwd: Path, name: str) -> None:
        self.log = cwd / f"worker-{name}.log"
        with self.log.open("a") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "qlp", "worker", "--concurrency", "2"],
                env=env,
                cwd=cwd,
                stdout=out,
                stderr=subprocess.STDOUT,
                text=True,
            )
        deadline = time.monotonic() + 60
        while "qlp worker: running" not in self.log.read_text():
            assert self.proc.poll() is None, self.log.read_text()
            assert time.monotonic() < deadline, "the worker never said it runs"
            time.sleep(0.05)

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(60)


@pytest.fixture
def llm() -> Iterator[FakeLLMServer]:
    with FakeLLMServer({"responses": dag_script(CHAIN, delay_s=0.8) * 10}) as server:
        yield server


@pytest.fixture
def api(tmp_path: Path, db_url: str, llm: FakeLLMServer) -> Iterator[ApiServer]:
    env = server_env(tmp_path, db_url, llm.base_url)
    env["QLP_WORKER_STALL_S"] = "4"  # a silent worker is taken over after 4 s, not 20
    server = ApiServer(env, cwd=tmp_path, args=("--no-worker",))
    server.create_user("wendy", PASSWORD, "member")
    with running(server):
        yield server


def _submit(api: ApiServer, token: str, text: str) -> str:
    with api.client(token) as c:
        r = c.post("/intents", json={"text": text})
        assert r.status_code == 202, r.text
        return str(r.json()["id"])


def _events(api: ApiServer, token: str, intent_id: str) -> list[dict[str, object]]:
    with api.client(token) as c:
        found: list[dict[str, object]] = c.get(f"/intents/{intent_id}/events").json()
    return found


def _wait_event(api: ApiServer, token: str, intent_id: str, kind: str) -> None:
    deadline = time.monotonic() + 60
    while not any(e["type"] == kind for e in _events(api, token, intent_id)):
        assert time.monotonic() < deadline, f"no {kind} event"
        time.sleep(0.05)


@pytest.mark.slow
def test_an_api_replica_queues_and_workers_run(api: ApiServer) -> None:
    token = api.token("wendy", PASSWORD)
    intent_id = _submit(api, token, "runs elsewhere")
    time.sleep(1.5)  # nothing here runs it: still queued (a wait, not a timed assertion)
    with api.client(token) as c:
        assert c.get(f"/intents/{intent_id}").json()["status"] == "queued"
    code, listed = qlp_workers(api)
    assert code == 1 and listed["alive"] == 0
    worker = Worker(api.env, api.cwd, "a")
    try:
        final = api.wait_status(token, intent_id, {"completed", "failed"})
        assert final["status"] == "completed", final
        code, listed = qlp_workers(api)
        assert code == 0 and listed["alive"] == 1
        # A cancel from the API reaches the intent running on the worker.
        second = _submit(api, token, "cancel me")
        _wait_event(api, token, second, "task.started")
        with api.client(token) as c:
            r = c.post(f"/intents/{second}/cancel")
        assert r.status_code == 200, r.text
        assert api.wait_status(token, second, {"cancelled"})["status"] == "cancelled"
    finally:
        assert worker.stop() == 0, worker.log.read_text()


@pytest.mark.slow
@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL], ids=["stopped", "killed"])
def test_another_worker_takes_over_without_re_running_succeeded_tasks(
    api: ApiServer, how: int
) -> None:
    token = api.token("wendy", PASSWORD)
    first = Worker(api.env, api.cwd, "first")
    try:
        intent_id = _submit(api, token, f"survive a worker {how}")
        _wait_event(api, token, intent_id, "task.succeeded")  # QL-DEV-001 done
        code = first.stop(how)
        if how == signal.SIGTERM:
            assert code == 0, first.log.read_text()
    finally:
        first.stop(signal.SIGKILL)
    second = Worker(api.env, api.cwd, "second")
    try:
        final = api.wait_status(token, intent_id, {"completed", "failed"}, timeout=180)
        assert final["status"] == "completed", final
    finally:
        assert second.stop() == 0, second.log.read_text()
    succeeded = Counter(
        str(e["payload"]["task_id"])  # type: ignore[index]
        for e in _events(api, token, intent_id)
        if e["type"] == "task.succeeded"
    )
    assert succeeded == {"QL-DEV-001": 1, "QL-DEV-002": 1, "QL-DOC-003": 1}


@pytest.mark.slow
def test_a_paused_worker_taken_over_writes_nothing_when_it_continues(api: ApiServer) -> None:
    token = api.token("wendy", PASSWORD)
    first = Worker(api.env, api.cwd, "paused")
    second: Worker | None = None
    try:
        intent_id = _submit(api, token, "survive a paused worker")
        _wait_event(api, token, intent_id, "task.started")  # a model call in flight
        first.proc.send_signal(signal.SIGSTOP)
        second = Worker(api.env, api.cwd, "taker")
        # The second worker finds the job stalled, waits out the lease, and continues.
        _wait_event(api, token, intent_id, "task.requeued")
        first.proc.send_signal(signal.SIGCONT)
        final = api.wait_status(token, intent_id, {"completed", "failed"}, timeout=180)
        assert final["status"] == "completed", final
        # The paused worker noticed and stopped working on it; it still serves.
        deadline = time.monotonic() + 30
        while "lease.lost" not in first.log.read_text():
            assert time.monotonic() < deadline, first.log.read_text()
            time.sleep(0.1)
        assert first.proc.poll() is None
    finally:
        first.proc.send_signal(signal.SIGCONT)
        assert first.stop() == 0, first.log.read_text()
        if second is not None:
            assert second.stop() == 0, second.log.read_text()
    events = _events(api, token, intent_id)
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    taken_at = next(k for k, e in enumerate(events) if e["type"] == "task.requeued")
    started = Counter(
        str(e["payload"]["task_id"])  # type: ignore[index]
        for e in events[taken_at:]
        if e["type"] == "task.started"
    )
    succeeded = Counter(
        str(e["payload"]["task_id"])  # type: ignore[index]
        for e in events
        if e["type"] == "task.succeeded"
    )
    assert succeeded == {"QL-DEV-001": 1, "QL-DEV-002": 1, "QL-DOC-003": 1}
    assert set(started) == {"QL-DEV-001", "QL-DEV-002", "QL-DOC-003"}  # all by the taker
