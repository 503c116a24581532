"""Intent and task states, the only transitions allowed between them, and which states
each action (run, resume, cancel, decide) may start from: defined here once."""

from __future__ import annotations

from enum import StrEnum

# The one import from outside domain/: errors.py is the hierarchy at the bottom of the
# house (it imports nothing), so a refused move is a QLPError the faces map (409, exit 2).
from qlp.errors import TransitionError

__all__ = [
    "CANCELLABLE",
    "DECIDABLE",
    "INTENT_TRANSITIONS",
    "RESUMABLE",
    "RUNNABLE",
    "STARTABLE",
    "TASKS_CANCELLABLE",
    "TASKS_REQUEUED_ON_RESUME",
    "TASK_TRANSITIONS",
    "IntentStatus",
    "TaskStatus",
    "TransitionError",
    "check_intent_transition",
    "check_task_transition",
    "require_state",
    "sources_of",
]


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


# -- which states each action starts from ---------------------------------------------------
# Work for a runner: an intent in one of these is (or was, when its process stopped) on its
# way; a runner starting up resumes it, and it counts against its user's active limit.
RUNNABLE = frozenset({_I.QUEUED, _I.PLANNING, _I.EXECUTING, _I.PACKAGING})
# A person may ask for another attempt (`qlp resume`, POST /intents/{id}/resume).
RESUMABLE = frozenset({_I.FAILED, _I.CANCELLED})
# What `Pipeline.run` may drive: work in progress, or another attempt.
STARTABLE = RUNNABLE | RESUMABLE
# A person may cancel: anything unfinished, a review wait included.
CANCELLABLE = RUNNABLE | {_I.REVIEWING}
# A review decision (approve, reject, request changes) may be recorded.
DECIDABLE = frozenset({_I.REVIEWING})

# Tasks a resumed run puts back to pending, in this order; succeeded ones keep their files.
TASKS_REQUEUED_ON_RESUME = (_T.RUNNING, _T.FAILED, _T.SKIPPED, _T.CANCELLED)
# Tasks a cancelled run marks cancelled (the others have finished).
TASKS_CANCELLABLE = frozenset({_T.PENDING, _T.RUNNING})


def sources_of(new: TaskStatus) -> frozenset[TaskStatus]:
    """The task states from which `new` may be entered."""
    return frozenset(old for old, targets in TASK_TRANSITIONS.items() if new in targets)


def require_state(
    intent_id: str, status: IntentStatus, allowed: frozenset[IntentStatus], refusal: str
) -> None:
    """Refuse an action whose intent is not in a state it starts from: TransitionError
    "intent ID is STATUS; REFUSAL"."""
    if status not in allowed:
        raise TransitionError(f"intent {intent_id} is {status.value}; {refusal}", status.value)


def check_intent_transition(
    old: IntentStatus, new: IntentStatus, intent_id: str | None = None
) -> None:
    if new not in INTENT_TRANSITIONS[old]:
        which = f"intent {intent_id}" if intent_id else "intent"
        raise TransitionError(f"{which} cannot go from {old} to {new}", old.value)


def check_task_transition(old: TaskStatus, new: TaskStatus) -> None:
    if new not in TASK_TRANSITIONS[old]:
        raise TransitionError(f"task cannot go from {old} to {new}", old.value)
