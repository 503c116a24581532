"""Run a task DAG: every ready task, at most N at once, failures skip their dependents.

The scheduler knows nothing of LLMs or tables; the pipeline gives it `TaskHooks`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from qlp.domain.plan import transitive_dependents
from qlp.errors import BudgetExceededError, QLPError


class TaskHooks(Protocol):
    async def execute(self, task_id: str) -> None:
        """Run the task to success (and record it), or raise."""

    async def failed(self, task_id: str, reason: str) -> None: ...

    async def skipped(self, task_ids: list[str], reason: str) -> None: ...

    async def cancelled(self, task_ids: list[str]) -> None: ...


@dataclass
class DagOutcome:
    succeeded: set[str] = field(default_factory=set)
    failed: dict[str, str] = field(default_factory=dict)
    skipped: set[str] = field(default_factory=set)
    stop_reason: str | None = None


def _describe(exc: BaseException) -> str:
    if isinstance(exc, QLPError):
        return exc.message
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


class DagScheduler:
    def __init__(
        self,
        deps: Mapping[str, Sequence[str]],
        order: Sequence[str],
        hooks: TaskHooks,
        *,
        max_parallel: int,
        task_timeout_s: float,
    ) -> None:
        self.deps = deps
        self.order = list(order)
        self.hooks = hooks
        self.max_parallel = max_parallel
        self.task_timeout_s = task_timeout_s

    async def _guarded(self, task_id: str) -> None:
        try:
            async with asyncio.timeout(self.task_timeout_s):
                await self.hooks.execute(task_id)
        except TimeoutError:
            raise QLPError(f"timed out after {self.task_timeout_s:g} s") from None

    async def run(self, already_succeeded: set[str]) -> DagOutcome:
        out = DagOutcome(succeeded=set(already_succeeded))
        pending = [t for t in self.order if t not in already_succeeded]
        running: dict[asyncio.Task[None], str] = {}
        try:
            while True:
                if out.stop_reason is None:
                    for task_id in list(pending):
                        if len(running) >= self.max_parallel:
                            break
                        if all(d in out.succeeded for d in self.deps[task_id]):
                            pending.remove(task_id)
                            task = asyncio.create_task(self._guarded(task_id), name=task_id)
                            running[task] = task_id
                if not running:
                    break
                done, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                for task in sorted(done, key=lambda t: self.order.index(running[t])):
                    task_id = running.pop(task)
                    exc = task.exception()
                    if exc is None:
                        out.succeeded.add(task_id)
                        continue
                    reason = _describe(exc)
                    out.failed[task_id] = reason
                    await self.hooks.failed(task_id, reason)
                    if isinstance(exc, BudgetExceededError):
                        out.stop_reason = reason
                    doomed = [t for t in pending if t in transitive_dependents(self.deps, task_id)]
                    if doomed:
                        for t in doomed:
                            pending.remove(t)
                        out.skipped.update(doomed)
                        await self.hooks.skipped(doomed, f"dependency {task_id} failed")
            if pending:
                # Only reachable when the run was stopped (e.g. budget spent).
                out.skipped.update(pending)
                await self.hooks.skipped(list(pending), out.stop_reason or "run stopped")
            return out
        except asyncio.CancelledError:
            for task in running:
                task.cancel()
            with contextlib.suppress(BaseException):
                await asyncio.gather(*running, return_exceptions=True)
            unfinished = [*running.values(), *pending]
            # Record the cancellation even though we are being cancelled ourselves.
            await asyncio.shield(self.hooks.cancelled(unfinished))
            raise
