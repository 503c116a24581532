"""The intent job queue on procrastinate (engine/jobs.py), on the real database: a deferred
job runs once; one intent's jobs never overlap; abort cancels the running job on whichever
worker has it; a worker stopped for shutdown leaves the intent a new job; a job whose worker
stopped beating is failed and a new one deferred."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text

from qlp.engine.jobs import IntentJobs
from qlp.store.db import connect


@pytest.fixture
async def clean(db_url: str) -> AsyncIterator[str]:
    engine = await connect(db_url)  # migrates, procrastinate's schema included
    async with engine.begin() as conn:
        await conn.execute(text("DELETE FROM procrastinate_jobs"))
        await conn.execute(text("DELETE FROM procrastinate_workers"))
    try:
        yield db_url
    finally:
        await engine.dispose()


class Recorder:
    def __init__(self) -> None:
        self.started: list[tuple[str, bool]] = []
        self.finished: list[str] = []
        self.cancelled: list[str] = []
        self.by_user: list[bool] = []  # at each cancellation: was it a user's cancel?
        self.release = asyncio.Event()
        self.hold = False

    async def __call__(self, intent_id: str, resume: bool, by_user: Callable[[], bool]) -> None:
        self.started.append((intent_id, resume))
        try:
            if self.hold:
                await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled.append(intent_id)
            self.by_user.append(by_user())
            raise
        self.finished.append(intent_id)


async def _until(condition: object, timeout: float = 30) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():  # type: ignore[operator]
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition never held")
        await asyncio.sleep(0.02)


async def _statuses(jobs: IntentJobs, intent_id: str) -> list[str]:
    listed = await jobs.app.job_manager.list_jobs_async(queue=jobs.queue, lock=intent_id)
    return sorted(str(j.status) for j in listed)


async def test_a_deferred_job_runs_once_and_a_waiting_one_is_not_doubled(clean: str) -> None:
    recorder = Recorder()
    jobs = IntentJobs(clean, recorder)
    await jobs.open()
    try:
        await jobs.defer("QL-INT-A")
        await jobs.defer("QL-INT-A")  # one is waiting already: nothing more
        await jobs.defer("QL-INT-B", resume=True)
        jobs.start_worker(2)
        await _until(lambda: len(recorder.finished) == 2)
        assert sorted(recorder.started) == [("QL-INT-A", False), ("QL-INT-B", True)]
    finally:
        await jobs.close()


async def test_abort_reaches_the_worker_that_runs_it(clean: str) -> None:
    recorder = Recorder()
    recorder.hold = True
    worker = IntentJobs(clean, recorder)  # a worker process
    api = IntentJobs(clean, Recorder())  # an API process: no worker of its own
    await worker.open()
    await api.open()
    try:
        await api.defer("QL-INT-C")
        worker.start_worker(1)
        await _until(lambda: recorder.started)
        assert await api.is_running("QL-INT-C")
        assert await api.abort("QL-INT-C")
        await _until(lambda: recorder.cancelled == ["QL-INT-C"])
        assert recorder.by_user == [True]  # the intent is marked cancelled
        assert recorder.finished == []
        await _until(lambda: worker.running == {})
    finally:
        await worker.close()
        await api.close()


async def test_a_worker_stopped_for_shutdown_leaves_the_intent_a_new_job(clean: str) -> None:
    recorder = Recorder()
    recorder.hold = True
    first = IntentJobs(clean, recorder)
    await first.open()
    await first.defer("QL-INT-D")
    first.start_worker(1)
    await _until(lambda: recorder.started)
    await first.close()  # SIGTERM's path: the run is cancelled, its state kept
    assert recorder.cancelled == ["QL-INT-D"]
    assert recorder.by_user == [False]  # an interruption, not a user's cancel
    after = Recorder()
    second = IntentJobs(clean, after)
    await second.open()
    try:
        second.start_worker(1)
        await _until(lambda: after.finished == ["QL-INT-D"])
    finally:
        await second.close()


async def test_a_job_whose_worker_went_silent_is_failed_and_deferred_again(
    clean: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    recorder = Recorder()
    jobs = IntentJobs(clean, recorder)
    await jobs.open()
    try:
        await jobs.defer("QL-INT-E", resume=True)
        # A worker took it, then died: its heartbeat stopped a minute ago.
        engine = await connect(clean)
        async with engine.begin() as conn:
            worker_id = (
                await conn.execute(
                    text(
                        "INSERT INTO procrastinate_workers (last_heartbeat) VALUES (:t) "
                        "RETURNING id"
                    ),
                    {"t": datetime.now(UTC) - timedelta(minutes=1)},
                )
            ).scalar_one()
            await conn.execute(
                text(
                    "UPDATE procrastinate_jobs SET status = 'doing', worker_id = :w "
                    "WHERE lock = 'QL-INT-E'"
                ),
                {"w": worker_id},
            )
        await engine.dispose()
        assert await jobs.sweep() == ["QL-INT-E"]
        assert await _statuses(jobs, "QL-INT-E") == ["failed", "todo"]
        assert await jobs.sweep() == []  # once
        jobs.sweep_s = 0.05
        jobs.start_worker(1)
        await _until(lambda: recorder.finished == ["QL-INT-E"])
        assert recorder.started == [("QL-INT-E", True)]
    finally:
        await jobs.close()


async def test_a_worker_whose_row_was_pruned_registers_again_and_keeps_working(
    clean: str,
) -> None:
    """A worker stopped longer than the stall time has its row pruned by the others; when it
    continues, its next fetch fails (the row is gone): it starts again instead of exiting,
    and a run it had was interrupted (state kept), not cancelled as by a user."""
    recorder = Recorder()
    recorder.hold = True
    jobs = IntentJobs(clean, recorder)
    await jobs.open()
    try:
        await jobs.defer("QL-INT-F")
        jobs.start_worker(2)  # a free slot: the worker fetches when a job comes
        await _until(lambda: recorder.started)
        engine = await connect(clean, migrate=False)
        async with engine.begin() as conn:  # what the others' sweep does to a silent worker
            await conn.execute(text("DELETE FROM procrastinate_workers"))
        await engine.dispose()
        await jobs.defer("QL-INT-G")  # wakes the worker: its fetch fails, it starts again
        await _until(lambda: recorder.cancelled == ["QL-INT-F"])
        assert recorder.by_user == [False]
        recorder.hold = False
        await _until(lambda: "QL-INT-G" in recorder.finished)
        assert jobs._worker_task is not None and not jobs._worker_task.done()
    finally:
        await jobs.close()
