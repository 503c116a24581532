"""The scheduler alone, with hooks that record what happens (no database, no LLM)."""

from __future__ import annotations

import asyncio

import pytest

from qlp.engine.scheduler import DagScheduler
from qlp.errors import BudgetExceededError


class Recorder:
    def __init__(
        self,
        fail: set[str] = frozenset(),
        delay: float = 0.01,  # type: ignore[assignment]
        budget_fail: str | None = None,
    ) -> None:
        self.fail = fail
        self.delay = delay
        self.budget_fail = budget_fail
        self.log: list[tuple[str, str]] = []
        self.running = 0
        self.peak = 0
        self.skipped_ids: dict[str, str] = {}
        self.cancelled_ids: list[str] = []

    async def execute(self, task_id: str) -> None:
        self.running += 1
        self.peak = max(self.peak, self.running)
        self.log.append(("start", task_id))
        try:
            await asyncio.sleep(self.delay)
            if task_id == self.budget_fail:
                raise BudgetExceededError("budget gone")
            if task_id in self.fail:
                raise RuntimeError("boom")
        finally:
            self.running -= 1
        self.log.append(("done", task_id))

    async def failed(self, task_id: str, reason: str) -> None:
        self.log.append(("failed", task_id))

    async def skipped(self, task_ids: list[str], reason: str) -> None:
        self.skipped_ids.update(dict.fromkeys(task_ids, reason))

    async def cancelled(self, task_ids: list[str]) -> None:
        self.cancelled_ids.extend(task_ids)


def _run(
    deps: dict[str, list[str]],
    hooks: Recorder,
    parallel: int = 4,
    done: set[str] | None = None,
    timeout: float = 10,
):  # type: ignore[no-untyped-def]
    s = DagScheduler(deps, list(deps), hooks, max_parallel=parallel, task_timeout_s=timeout)
    return asyncio.run(s.run(done or set()))


def test_bound_is_respected_and_reached() -> None:
    deps = {f"t{i}": [] for i in range(10)}
    hooks = Recorder()
    out = _run(deps, hooks, parallel=3)
    assert out.succeeded == set(deps)
    assert hooks.peak == 3


def test_failure_skips_transitive_dependents_only() -> None:
    deps = {"a": [], "b": ["a"], "c": ["b"], "d": []}
    hooks = Recorder(fail={"a"})
    out = _run(deps, hooks)
    assert out.failed == {"a": "RuntimeError: boom"}
    assert hooks.skipped_ids == {"b": "dependency a failed", "c": "dependency a failed"}
    assert out.succeeded == {"d"}


def test_already_succeeded_tasks_are_not_rerun() -> None:
    deps = {"a": [], "b": ["a"]}
    hooks = Recorder()
    out = _run(deps, hooks, done={"a"})
    assert [t for kind, t in hooks.log if kind == "start"] == ["b"]
    assert out.succeeded == {"a", "b"}


def test_timeout_fails_the_task() -> None:
    hooks = Recorder(delay=1.0)
    out = _run({"a": []}, hooks, timeout=0.05)
    assert out.failed == {"a": "timed out after 0.05 s"}


def test_budget_failure_stops_launching() -> None:
    deps = {"a": [], "b": [], "c": []}
    hooks = Recorder(budget_fail="a")
    out = _run(deps, hooks, parallel=1)
    assert out.stop_reason == "budget gone"
    assert hooks.skipped_ids == {"b": "budget gone", "c": "budget gone"}


def test_cancel_reports_running_and_pending() -> None:
    deps = {"a": [], "b": ["a"]}
    hooks = Recorder(delay=10)

    async def main() -> None:
        s = DagScheduler(deps, list(deps), hooks, max_parallel=2, task_timeout_s=60)
        task = asyncio.create_task(s.run(set()))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert sorted(hooks.cancelled_ids) == ["a", "b"]
