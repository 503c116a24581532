"""Intent and task states, and the only transitions allowed between them."""

from __future__ import annotations

from enum import StrEnum


class IntentStatus(StrEnum):
    QUEUED = "queued"
    PLANNING = "planning"
    EXECUTING = "executing"
    REVIEWING = "reviewing"
    PACKAGING = "packaging"
    COMPLETED = "completed"
    FAILED = "failed"
    REJECTED = "rejected"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        return self in _INTENT_TERMINAL


class TaskStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        return self in _TASK_TERMINAL


_INTENT_TERMINAL = frozenset(
    {IntentStatus.COMPLETED, IntentStatus.FAILED, IntentStatus.REJECTED, IntentStatus.CANCELLED}
)
_TASK_TERMINAL = frozenset(
    {TaskStatus.SUCCEEDED, TaskStatus.FAILED, TaskStatus.SKIPPED, TaskStatus.CANCELLED}
)

_I = IntentStatus
INTENT_TRANSITIONS: dict[IntentStatus, frozenset[IntentStatus]] = {
    _I.QUEUED: frozenset({_I.PLANNING, _I.FAILED, _I.CANCELLED}),
    _I.PLANNING: frozenset({_I.PLANNING, _I.EXECUTING, _I.FAILED, _I.CANCELLED}),
    _I.EXECUTING: frozenset(
        {_I.EXECUTING, _I.REVIEWING, _I.PACKAGING, _I.COMPLETED, _I.FAILED, _I.CANCELLED}
    ),
    _I.REVIEWING: frozenset({_I.EXECUTING, _I.PACKAGING, _I.REJECTED, _I.FAILED, _I.CANCELLED}),
    _I.PACKAGING: frozenset({_I.PACKAGING, _I.COMPLETED, _I.FAILED, _I.CANCELLED}),
    # A cancelled or failed intent may be resumed: it goes back to work where it stopped.
    _I.CANCELLED: frozenset({_I.PLANNING, _I.EXECUTING}),
    _I.FAILED: frozenset({_I.PLANNING, _I.EXECUTING}),
    _I.COMPLETED: frozenset(),
    _I.REJECTED: frozenset(),
}

_T = TaskStatus
TASK_TRANSITIONS: dict[TaskStatus, frozenset[TaskStatus]] = {
    _T.PENDING: frozenset({_T.RUNNING, _T.SKIPPED, _T.CANCELLED}),
    _T.RUNNING: frozenset({_T.RUNNING, _T.SUCCEEDED, _T.FAILED, _T.CANCELLED, _T.PENDING}),
    _T.SUCCEEDED: frozenset({_T.PENDING}),  # re-run on request (review feedback)
    # Resume puts unfinished work back in the queue.
    _T.FAILED: frozenset({_T.PENDING}),
    _T.SKIPPED: frozenset({_T.PENDING}),
    _T.CANCELLED: frozenset({_T.PENDING}),
}


def sources_of(new: TaskStatus) -> frozenset[TaskStatus]:
    """The task states from which `new` may be entered."""
    return frozenset(old for old, targets in TASK_TRANSITIONS.items() if new in targets)


class TransitionError(ValueError):
    pass


def check_intent_transition(old: IntentStatus, new: IntentStatus) -> None:
    if new not in INTENT_TRANSITIONS[old]:
        raise TransitionError(f"intent cannot go from {old} to {new}")


def check_task_transition(old: TaskStatus, new: TaskStatus) -> None:
    if new not in TASK_TRANSITIONS[old]:
        raise TransitionError(f"task cannot go from {old} to {new}")
