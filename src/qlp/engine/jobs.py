"""Intent runs as jobs on procrastinate, in the QLP database (docs/ARCHITECTURE.md, "Jobs").

One job runs one intent to its next stop (done, failed, cancelled, waiting for review). A
job carries procrastinate's `lock` = the intent id, so two jobs of one intent never run at
once on any worker, and its `queueing_lock` = the intent id, so at most one waits. A review
wait holds no job: the decision defers the continuation.

- Cancel: the job is aborted through procrastinate (a NOTIFY to every worker); the worker
  that runs it cancels the run's asyncio task, and the pipeline records the cancellation.
- Stop (SIGTERM): running jobs are aborted for shutdown; the pipeline keeps each intent's
  state (every step is committed) and a new job is deferred, which another worker, or this
  one after its restart, takes.
- A worker that dies (SIGKILL, a lost host) or is stopped (SIGSTOP, a frozen VM) stops
  sending heartbeats. Every worker sweeps every quarter of `stall_s` (QLP_WORKER_STALL_S,
  20 s): a job whose worker has not beaten for `stall_s` is failed (its row, not retried:
  the old worker's late finish must not touch a new run) and a new job is deferred for its
  intent. The new job's run claims the intent's lease once the old one has expired (same
  time to live, store/leases.py); a stopped worker that resumes finds its writes refused and
  stops. Succeeded tasks are not re-run (the pipeline resumes from committed state); a model
  call in flight may be repeated once (the transcript has both).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import structlog
from procrastinate import App, JobContext, PsycopgConnector
from procrastinate.exceptions import AlreadyEnqueued
from procrastinate.job_context import AbortReason
from procrastinate.jobs import Status
from procrastinate.worker import Worker
from sqlalchemy.engine import make_url

from qlp.periodic import cancelled, every

log = structlog.get_logger("qlp.jobs")

TASK = "qlp.run_intent"
# A worker silent this long is taken for dead (QLP_WORKER_STALL_S); it beats, and every
# worker sweeps, every quarter of it.
STALL_S = 20.0

# What a job runs: (intent id, resume, by_user) -> None. resume: a failed or cancelled intent
# may start; by_user(): whether a cancellation of the run is a user's cancel (an abort asked
# for through `abort`) rather than the worker stopping or failing.
RunIntent = Callable[[str, bool, Callable[[], bool]], Awaitable[None]]
# A worker whose loop failed (its database row pruned while it was stopped, a lost
# connection) starts again after this many seconds.
RESTART_S = 1.0


def conninfo(database_url: str) -> str:
    """A libpq connection string from QLP's SQLAlchemy database URL."""
    url = make_url(database_url).set(drivername="postgresql")
    return url.render_as_string(hide_password=False)


class IntentJobs:
    """The job queue of intents: defer, abort, run a worker, sweep stalled jobs."""

    def __init__(
        self,
        database_url: str,
        run: RunIntent,
        queue: str = "qlp-intents",
        *,
        stall_s: float = STALL_S,
    ) -> None:
        self._run = run
        self.queue = queue
        self.stall_s = stall_s
        self.sweep_s = stall_s / 4
        connector = PsycopgConnector(conninfo=conninfo(database_url), min_size=1, max_size=4)
        self.app = App(connector=connector)
        self._task = self.app.task(name=TASK, queue=queue, pass_context=True)(self._job)
        self._worker: Worker | None = None
        self._stopping = False
        self._worker_task: asyncio.Task[None] | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self.running: dict[int, str] = {}  # job id -> intent id, on this process's worker
        self.waiting = 0  # jobs of the queue not started yet (as of the last sweep)

    async def open(self) -> None:
        await self.app.open_async()

    async def close(self) -> None:
        await self.stop_worker()
        await self.app.close_async()

    # -- the queue ---------------------------------------------------------------------------
    async def defer(self, intent_id: str, *, resume: bool = False, after_s: float = 0) -> None:
        """A job for the intent (starting `after_s` seconds from now), unless one is
        waiting already."""
        options: dict[str, object] = {"lock": intent_id, "queueing_lock": intent_id}
        if after_s:
            options["schedule_in"] = {"seconds": after_s}
        deferrer = self._task.configure(**options)  # type: ignore[arg-type]
        with contextlib.suppress(AlreadyEnqueued):
            await deferrer.defer_async(intent_id=intent_id, resume=resume)

    async def _jobs_of(self, intent_id: str, status: str) -> list[int]:
        jobs = await self.app.job_manager.list_jobs_async(
            queue=self.queue, lock=intent_id, status=status
        )
        return [int(j.id) for j in jobs if j.id is not None]

    async def abort(self, intent_id: str) -> bool:
        """Asks the worker running the intent's job to stop it, and drops a waiting job.
        True if a job was running."""
        for job_id in await self._jobs_of(intent_id, "todo"):
            await self.app.job_manager.cancel_job_by_id_async(job_id, delete_job=True)
        running = await self._jobs_of(intent_id, "doing")
        for job_id in running:
            await self.app.job_manager.cancel_job_by_id_async(job_id, abort=True)
        return bool(running)

    async def is_running(self, intent_id: str) -> bool:
        return bool(await self._jobs_of(intent_id, "doing"))

    async def without_job(self, intent_ids: list[str]) -> list[str]:
        """Those of `intent_ids` that have no job waiting or running, in any queue."""
        held = {
            str(job.lock)
            for status in ("todo", "doing")
            for job in await self.app.job_manager.list_jobs_async(status=status)
        }
        return [i for i in intent_ids if i not in held]

    # -- the worker --------------------------------------------------------------------------
    async def _job(self, context: JobContext, intent_id: str, resume: bool = False) -> None:
        job_id = int(context.job.id or 0)
        self.running[job_id] = intent_id

        def by_user() -> bool:
            return context.abort_reason() == AbortReason.USER_REQUEST

        try:
            await self._run(intent_id, resume, by_user)
        except asyncio.CancelledError:
            if not by_user():
                # Stopping or failing worker: the intent keeps its state and a new job, which
                # whoever works next takes (after the sweep has failed this one's row).
                await asyncio.shield(self.defer(intent_id))
            raise
        finally:
            self.running.pop(job_id, None)

    def start_worker(self, concurrency: int, *, name: str | None = None) -> None:
        self._stopping = False
        self._worker_task = asyncio.create_task(self._work(concurrency, name), name="qlp-worker")
        sweeping = every(self.sweep_s, self.sweep, at_once=True)
        self._sweeper = asyncio.create_task(sweeping, name="qlp-job-sweeper")

    async def _work(self, concurrency: int, name: str | None) -> None:
        """procrastinate's worker, started again if its loop fails: a worker stopped longer
        than the stall time finds its row pruned by the others (its next fetch then fails)
        and must register anew, not exit. Its running jobs were aborted as at shutdown."""
        while not self._stopping:
            self._worker = Worker(
                self.app,
                queues=[self.queue],
                name=name,
                concurrency=concurrency,
                install_signal_handlers=False,
                shutdown_graceful_timeout=0,  # a run stops at once; its state is committed
                update_heartbeat_interval=self.stall_s / 4,
                stalled_worker_timeout=self.stall_s,
                delete_jobs="successful",
            )
            try:
                await self._worker.run()  # type: ignore[no-untyped-call]  # untyped upstream
                return
            except Exception:
                if self._stopping:
                    return
                log.exception("jobs.worker_failed_restarting")
                await asyncio.sleep(RESTART_S)  # a stop meanwhile ends the loop after it

    async def wait_worker(self) -> None:
        if self._worker_task is not None:
            await self._worker_task

    async def stop_worker(self) -> None:
        if self._sweeper is not None:
            await cancelled(self._sweeper)
            self._sweeper = None
        self._stopping = True
        if self._worker is not None and self._worker_task is not None:
            self._worker.stop()  # type: ignore[no-untyped-call]
            with contextlib.suppress(BaseException):
                await self._worker_task
        self._worker = self._worker_task = None

    # -- stalled jobs ------------------------------------------------------------------------
    async def sweep(self) -> list[str]:
        """Fails every job whose worker stopped beating and defers a new one for its
        intent; returns those intents."""
        manager = self.app.job_manager
        stalled = await manager.get_stalled_jobs(
            queue=self.queue, seconds_since_heartbeat=self.stall_s
        )
        taken: list[str] = []
        for job in stalled:
            if job.id is None:
                continue
            intent_id = str(job.task_kwargs.get("intent_id"))
            await manager.finish_job_by_id_async(job.id, status=Status.FAILED, delete_job=False)
            await self.defer(intent_id, resume=bool(job.task_kwargs.get("resume")))
            log.warning("jobs.stalled_job_taken_over", intent_id=intent_id, job_id=job.id)
            taken.append(intent_id)
        await manager.prune_stalled_workers(seconds_since_heartbeat=self.stall_s)
        self.waiting = len(list(await manager.list_jobs_async(queue=self.queue, status="todo")))
        return taken
