"""A person's review decision on an intent waiting for review, as data.

Three kinds, each with the fields it needs: `Approve` (an optional reason), `Reject` (a
reason), `RequestChanges` (feedback, and the tasks to redo; none named means all). Made
with `parse_decision` from what a face received (the CLI's options, the API's body), which
refuses a missing reason or feedback. `kind` is the word stored in `review_decisions`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Literal

from qlp.errors import UserInputError

DecisionKind = Literal["approve", "reject", "request_changes"]
DECISION_KINDS: tuple[DecisionKind, ...] = ("approve", "reject", "request_changes")


@dataclass(frozen=True)
class Approve:
    """Build the capsule of the current round (the gates must allow it under the policy)."""

    reason: str | None = None
    kind: ClassVar[DecisionKind] = "approve"

    @property
    def tasks(self) -> tuple[str, ...]:
        return ()


@dataclass(frozen=True)
class Reject:
    """End the intent as rejected; nothing is packaged."""

    reason: str
    kind: ClassVar[DecisionKind] = "reject"

    def __post_init__(self) -> None:
        if not self.reason.strip():
            raise UserInputError("reject needs a reason (--reason TEXT)")

    @property
    def tasks(self) -> tuple[str, ...]:
        return ()


@dataclass(frozen=True)
class RequestChanges:
    """Re-run `tasks` (all when empty) and their dependents with `feedback` in their
    prompt, then gate the project again."""

    feedback: str
    tasks: tuple[str, ...] = ()
    kind: ClassVar[DecisionKind] = "request_changes"

    def __post_init__(self) -> None:
        if not self.feedback.strip():
            raise UserInputError("request_changes needs feedback (--feedback TEXT)")
        # Named once each, in a stable order (the stored row and the events show them).
        object.__setattr__(self, "tasks", tuple(sorted(set(self.tasks))))

    @property
    def reason(self) -> str:
        return self.feedback


Decision = Approve | Reject | RequestChanges


def parse_decision(kind: str, *, reason: str | None = None, tasks: Sequence[str] = ()) -> Decision:
    """The decision `kind` with its fields; a missing reason or feedback, tasks named for a
    decision that takes none, or an unknown kind is a UserInputError."""
    if kind != "request_changes" and tasks:
        raise UserInputError(f"{kind} takes no tasks; name tasks with request_changes only")
    if kind == "approve":
        return Approve(reason=reason or None)
    if kind == "reject":
        return Reject(reason=reason or "")
    if kind == "request_changes":
        return RequestChanges(feedback=reason or "", tasks=tuple(tasks))
    raise UserInputError(f"unknown decision {kind!r} (one of: {', '.join(DECISION_KINDS)})")
