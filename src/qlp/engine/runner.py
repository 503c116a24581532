"""Intents run in the background of a long-lived process (the service).

The CLI drives one intent in the foreground; the server accepts many and runs at most
`max_running` at once, the rest wait in a queue in state `queued`. Because every step of
an intent is committed before the next, the queue itself needs no persistence: on start the
runner picks up every intent that was queued, planning, executing or packaging when the
process last stopped, oldest first.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import Any

import structlog

from qlp.domain import events as ev
from qlp.domain.states import IntentStatus
from qlp.engine.pipeline import Pipeline
from qlp.errors import ConflictError, LimitExceededError, QLPError
from qlp.store.base import IntentRecord
from qlp.store.intent_queries import IntentQueries

log = structlog.get_logger("qlp.runner")

# States in which an intent is work for the runner (it resumes them after a restart).
RUNNABLE = frozenset(
    {IntentStatus.QUEUED, IntentStatus.PLANNING, IntentStatus.EXECUTING, IntentStatus.PACKAGING}
)
# States a person may cancel from.
CANCELLABLE = RUNNABLE | {IntentStatus.REVIEWING}
# States from which a person may ask for another attempt.
RESUMABLE = frozenset({IntentStatus.FAILED, IntentStatus.CANCELLED})


class IntentRunner:
    def __init__(
        self,
        pipeline: Pipeline,
        *,
        max_running: int,
        max_active_per_user: int,
    ) -> None:
        self.pipeline = pipeline
        self.store = pipeline.store
        self.queries = IntentQueries(pipeline.store)
        self.max_running = max_running
        self.max_active_per_user = max_active_per_user
        # (intent id, resume): a resumed intent may start from failed or cancelled.
        self._queue: asyncio.Queue[tuple[str, bool]] = asyncio.Queue()
        self._waiting: set[str] = set()
        self._running: dict[str, asyncio.Task[None]] = {}
        self._workers: list[asyncio.Task[None]] = []
        self._stopping = False

    # -- observed by /metrics and /readyz -------------------------------------------------
    @property
    def queue_depth(self) -> int:
        return len(self._waiting)

    @property
    def running(self) -> int:
        return len(self._running)

    @property
    def accepting(self) -> bool:
        return bool(self._workers) and not self._stopping

    # -- life ---------------------------------------------------------------------------
    async def start(self) -> list[str]:
        """Start the workers and queue every intent an earlier process left unfinished."""
        resumed = await self.queries.ids_in_states(RUNNABLE)
        for intent_id in resumed:
            self._enqueue(intent_id)
        self._workers = [
            asyncio.create_task(self._worker(), name=f"qlp-runner-{i}")
            for i in range(self.max_running)
        ]
        if resumed:
            log.info("runner.resumed", intents=len(resumed))
        return resumed

    async def stop(self) -> None:
        """Interrupt running intents without changing their state (each step is already
        committed, so the next start resumes them) and stop the workers."""
        self._stopping = True
        self.pipeline.interrupting = True
        for worker in self._workers:
            worker.cancel()
        running = list(self._running.values())
        for task in running:
            task.cancel()
        with contextlib.suppress(BaseException):
            await asyncio.gather(*self._workers, *running, return_exceptions=True)
        self._workers = []

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
            intent = await self.pipeline.submit(text, options=options, user_id=user_id)
        self._enqueue(intent.id)
        return intent

    async def cancel(self, intent_id: str) -> IntentRecord:
        intent = await self.store.get_intent(intent_id)
        if intent.status not in CANCELLABLE:
            raise ConflictError(f"intent {intent_id} is {intent.status.value}; nothing to cancel")
        task = self._running.get(intent_id)
        if task is not None:
            task.cancel()  # the pipeline records the cancellation as it unwinds
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(asyncio.shield(task), timeout=30)
            intent = await self.store.get_intent(intent_id)
            if intent.status.is_terminal:
                return intent
        # Waiting in the queue or for review: nothing runs, the state change is enough (a
        # worker that later picks the id up skips it).
        with contextlib.suppress(QLPError):
            await self.store.set_intent_status(
                intent_id,
                IntentStatus.CANCELLED,
                event_type=ev.INTENT_CANCELLED,
                error="cancelled by the user",
            )
        return await self.store.get_intent(intent_id)

    async def resume(self, intent_id: str) -> IntentRecord:
        intent = await self.store.get_intent(intent_id)
        if intent.status not in RESUMABLE:
            raise ConflictError(
                f"intent {intent_id} is {intent.status.value}; only failed or cancelled "
                "intents can be resumed"
            )
        self._enqueue(intent_id, resume=True)
        return intent

    async def decide(
        self,
        intent_id: str,
        decision: str,
        *,
        actor: str,
        reason: str | None,
        tasks: Sequence[str],
    ) -> IntentRecord:
        intent = await self.pipeline.decide(
            intent_id, decision, actor=actor, reason=reason, tasks=tasks, run_after=False
        )
        if intent.status in RUNNABLE:
            self._enqueue(intent_id)
        return intent

    # -- work ---------------------------------------------------------------------------
    def _enqueue(self, intent_id: str, *, resume: bool = False) -> None:
        if intent_id in self._waiting or intent_id in self._running:
            return
        self._waiting.add(intent_id)
        self._queue.put_nowait((intent_id, resume))

    async def _worker(self) -> None:
        while True:
            intent_id, resume = await self._queue.get()
            self._waiting.discard(intent_id)
            task = asyncio.create_task(self._run_one(intent_id, resume), name=intent_id)
            self._running[intent_id] = task
            try:
                await asyncio.wait([task])
            finally:
                self._running.pop(intent_id, None)

    async def _run_one(self, intent_id: str, resume: bool) -> None:
        intent = await self.store.get_intent(intent_id)
        allowed = RUNNABLE | RESUMABLE if resume else RUNNABLE
        if intent.status not in allowed:
            return  # cancelled while it waited, or decided elsewhere
        try:
            await self.pipeline.run(intent_id)
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
