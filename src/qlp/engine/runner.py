"""Intents run as jobs (engine/jobs.py), in the background of long-lived processes.

The CLI drives one intent in the foreground; `qlp serve` and `qlp worker` defer a job per
intent and run jobs, at most `max_running` at once per process; the rest wait in state
`queued`. Because every step of an intent is committed before the next, a job that stops
(a worker's SIGTERM, SIGKILL or a lost host) leaves nothing to redo: the next job continues.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import structlog

from qlp.domain import events as ev
from qlp.domain.decisions import Decision
from qlp.domain.states import (
    CANCELLABLE,
    RESUMABLE,
    RUNNABLE,
    STARTABLE,
    IntentStatus,
    require_state,
)
from qlp.engine.jobs import IntentJobs
from qlp.engine.pipeline import Pipeline
from qlp.errors import ConflictError, IntentBusyError, LimitExceededError, QLPError
from qlp.store.base import IntentRecord
from qlp.store.intent_queries import QUEUE_OPTION, IntentQueries

log = structlog.get_logger("qlp.runner")

# How long a cancel waits for the worker running the intent to record it.
CANCEL_WAIT_S = 30.0


class IntentRunner:
    def __init__(
        self,
        pipeline: Pipeline,
        database_url: str,
        *,
        max_running: int,
        max_active_per_user: int,
        work: bool = True,
        queue: str = "qlp-intents",
        stall_s: float = 20.0,
    ) -> None:
        self.pipeline = pipeline
        self.store = pipeline.store
        self.queries = IntentQueries(pipeline.store)
        self.max_running = max_running
        self.max_active_per_user = max_active_per_user
        self.work = work  # False: an API replica, whose intents other processes' workers run
        self.jobs = IntentJobs(database_url, self._run_one, queue, stall_s=stall_s)
        self._open = False
        self._stopping = False

    # -- observed by /metrics and /readyz -------------------------------------------------
    @property
    def queue_depth(self) -> int:
        return self.jobs.waiting

    @property
    def running(self) -> int:
        return len(self.jobs.running)

    @property
    def accepting(self) -> bool:
        return self._open and not self._stopping

    # -- life ---------------------------------------------------------------------------
    async def start(self) -> list[str]:
        """Open the job queue, give every unfinished intent without a waiting job one
        (intents an earlier version left, or whose job was lost), and start this
        process's worker unless it is an API replica only."""
        await self.jobs.open()
        self._open = True
        unfinished = await self.queries.ids_in_states(RUNNABLE, queue=self.jobs.queue)
        resumed = await self.jobs.without_job(unfinished)
        for intent_id in resumed:
            await self.jobs.defer(intent_id)
        if self.work:
            self.jobs.start_worker(self.max_running)
        if resumed:
            log.info("runner.resumed", intents=len(resumed))
        return resumed

    async def stop(self) -> None:
        """Interrupt running intents without changing their state (each step is already
        committed; their jobs are deferred again for whoever works next) and close."""
        self._stopping = True
        if self._open:
            await self.jobs.close()
        self._open = False

    async def serve_jobs(self) -> None:
        """Until the worker stops (`qlp worker`: until stop() is called)."""
        await self.jobs.wait_worker()

    # -- actions ------------------------------------------------------------------------
    async def submit(self, text: str, *, options: dict[str, Any], user_id: str) -> IntentRecord:
        if not self.accepting:
            raise ConflictError("the server is shutting down; submit again in a moment")
        async with self.store.user_lock(user_id):  # held across processes (PostgreSQL)
            active = await self.queries.count_active(user_id, RUNNABLE)
            if active >= self.max_active_per_user:
                raise LimitExceededError(
                    f"you have {active} unfinished intents; the limit is "
                    f"{self.max_active_per_user} (QLP_USER_MAX_ACTIVE_INTENTS). Wait for one "
                    "to finish or cancel one",
                    retry_after_s=30,
                )
            intent = await self.pipeline.submit(
                text, options={**options, QUEUE_OPTION: self.jobs.queue}, user_id=user_id
            )
        await self.jobs.defer(intent.id)
        return intent

    async def cancel(self, intent_id: str) -> IntentRecord:
        intent = await self.store.get_intent(intent_id)
        require_state(intent_id, intent.status, CANCELLABLE, "nothing to cancel")
        if await self.jobs.abort(intent_id):
            # Its worker, in any process, cancels the run; the pipeline records it.
            intent = await self._until_terminal(intent_id, CANCEL_WAIT_S)
            if intent.status.is_terminal:
                return intent
        # Waiting in the queue or for review: nothing runs, the state change is enough (a
        # worker that later picks the id up skips it). The move is checked where it is
        # written: a decision that moved the intent since it was read (rejected, say) makes
        # this a TransitionError, a 409 for the caller, never a silent success.
        await self.store.set_intent_status(
            intent_id,
            IntentStatus.CANCELLED,
            event_type=ev.INTENT_CANCELLED,
            error="cancelled by the user",
        )
        return await self.store.get_intent(intent_id)

    async def resume(self, intent_id: str) -> IntentRecord:
        intent = await self.store.get_intent(intent_id)
        require_state(
            intent_id, intent.status, RESUMABLE, "only failed or cancelled intents can be resumed"
        )
        await self.jobs.defer(intent_id, resume=True)
        return intent

    async def decide(self, intent_id: str, decision: Decision, *, actor: str) -> IntentRecord:
        """Record the decision; its continuation (packaging, the tasks again) is queued like
        any other work, so the request returns at once."""
        decided = await self.pipeline.decide(intent_id, decision, actor=actor)
        if decided.next is not None:
            await self.jobs.defer(intent_id)
        return decided.intent

    # -- work ---------------------------------------------------------------------------
    async def _until_terminal(self, intent_id: str, timeout_s: float) -> IntentRecord:
        deadline = asyncio.get_running_loop().time() + timeout_s
        while True:
            intent = await self.store.get_intent(intent_id)
            if intent.status.is_terminal or asyncio.get_running_loop().time() > deadline:
                return intent
            if not await self.jobs.is_running(intent_id):
                return await self.store.get_intent(intent_id)
            await asyncio.sleep(0.05)

    async def _run_one(self, intent_id: str, resume: bool, by_user: Callable[[], bool]) -> None:
        """One job: run the intent to its next stop (`by_user`: whether a cancellation is a
        user's cancel, not the worker stopping)."""
        intent = await self.store.get_intent(intent_id)
        allowed = STARTABLE if resume else RUNNABLE
        if intent.status not in allowed:
            return  # cancelled while it waited, or decided elsewhere
        try:
            await self.pipeline.run(intent_id, by_user=by_user)
        except IntentBusyError:
            # A process stopped (or dead) while it ran this intent still has a live lease on
            # it: try again once it may have expired; the run continues from committed state.
            log.warning("runner.intent_busy", intent_id=intent_id)
            await self.jobs.defer(intent_id, resume=resume, after_s=self.jobs.sweep_s)
        except QLPError as exc:
            log.warning("runner.intent_stopped", intent_id=intent_id, error=exc.message)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a defect: record it on the intent, keep serving others
            log.exception("runner.intent_crashed", intent_id=intent_id)
            with contextlib.suppress(Exception):
                await self.store.set_intent_status(
                    intent_id,
                    IntentStatus.FAILED,
                    event_type=ev.INTENT_FAILED,
                    error=f"internal error ({type(exc).__name__}); see the server log",
                )
