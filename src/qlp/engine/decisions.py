"""Recording a review decision, and saying what runs next.

Recording is one step, under the intent's lease (store/leases.py), each write committed
with its event: the decision row; for changes, the round's project kept as a capsule
version and the tasks to redo put back to pending; the intent moved to the state it
continues from (packaging, executing) or ended (rejected). Running the continuation is the
caller's job: the CLI runs it in-process (`Pipeline.run`), the service's runner enqueues
it. So a review wait holds no job, and the decision is what queues the work after it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum

from qlp.domain import events as ev
from qlp.domain.decisions import Approve, Decision, Reject, RequestChanges
from qlp.domain.states import DECIDABLE, IntentStatus, TaskStatus, require_state
from qlp.engine.quality import Quality, rerun_set
from qlp.errors import UserInputError
from qlp.review.gate import Gate, may_approve
from qlp.store.base import IntentRecord
from qlp.store.repository import Store
from qlp.store.reviews import Decision as DecisionRecord


class Continuation(StrEnum):
    """What runs after a decision; both are `Pipeline.run` on the intent's new state."""

    PACKAGE = "package"  # approved: build, sign and store the capsule (state packaging)
    RERUN = "rerun"  # changes requested: the tasks again, then the gate (state executing)


@dataclass(frozen=True)
class Decided:
    intent: IntentRecord  # as the decision left it
    record: DecisionRecord  # the stored decision
    next: Continuation | None  # None: nothing runs (rejected)


async def record_decision(
    store: Store,
    quality: Quality | None,
    intent_id: str,
    decision: Decision,
    *,
    actor: str,
    local: Callable[[IntentRecord], Awaitable[IntentRecord]] | None = None,
) -> Decided:
    """Record `decision` by `actor` on an intent waiting for review and move the intent on.

    Refused with TransitionError (a conflict: HTTP 409, exit 2) when the intent is not in
    reviewing, including when another request (a cancel, a second decision) moved it first;
    with UserInputError when the gates do not allow an approval or a named task is unknown.
    `local` gives the intent with its workspace on this host (Pipeline.local), for the
    round's capsule that a request for changes packages here."""
    async with store.leases.hold(intent_id):
        intent = await store.get_intent(intent_id)
        require_state(intent_id, intent.status, DECIDABLE, "it is not waiting for review")
        if quality is None:
            raise UserInputError("review needs validation, which is off (QLP_VALIDATE=false)")
        current = await quality.reviews.current_round(intent_id)
        match decision:
            case Approve():
                blocked = may_approve(
                    [Gate(g["name"], bool(g["passed"]), str(g["detail"])) for g in current.gates],
                    quality.config.policy,
                )
                if blocked:
                    raise UserInputError(f"cannot approve: {blocked}")
                made = await _record(quality, intent_id, current.round, decision, actor)
                await store.set_intent_status(
                    intent_id, IntentStatus.PACKAGING, event_type=ev.INTENT_PACKAGING
                )
                then: Continuation | None = Continuation.PACKAGE
            case Reject():
                made = await _record(quality, intent_id, current.round, decision, actor)
                await store.set_intent_status(
                    intent_id,
                    IntentStatus.REJECTED,
                    event_type=ev.INTENT_REJECTED,
                    error=decision.reason,
                )
                then = None
            case RequestChanges():
                here = intent if local is None else await local(intent)
                made = await _changes(store, quality, here, current.round, decision, actor)
                then = Continuation.RERUN
        return Decided(await store.get_intent(intent_id), made, then)


async def _record(
    quality: Quality, intent_id: str, round_: int, decision: Approve | Reject, actor: str
) -> DecisionRecord:
    return await quality.reviews.decide(
        intent_id, round_, decision=decision.kind, actor=actor, reason=decision.reason, tasks=[]
    )


async def _changes(
    store: Store,
    quality: Quality,
    intent: IntentRecord,
    round_: int,
    decision: RequestChanges,
    actor: str,
) -> DecisionRecord:
    records = await store.get_tasks(intent.id)
    known = {t.id for t in records}
    unknown = sorted(set(decision.tasks) - known)
    if unknown:
        raise UserInputError(
            f"intent {intent.id} has no task {', '.join(unknown)} "
            f"(its tasks: {', '.join(sorted(known))})"
        )
    made = await quality.reviews.decide(
        intent.id,
        round_,
        decision=decision.kind,
        actor=actor,
        reason=decision.feedback,
        tasks=list(decision.tasks),
    )
    # This round's project is kept as a capsule version of its own (the parent of the next).
    await quality.package(intent, await quality.latest_report(intent.id), made, final=False)
    deps = {t.id: t.dependencies for t in records}
    again = rerun_set(deps, list(decision.tasks) or sorted(known))
    await store.set_tasks_status(
        intent.id,
        again,
        TaskStatus.PENDING,
        event_type="task.requeued",
        payload={"reason": "changes requested"},
    )
    await store.set_intent_status(intent.id, IntentStatus.EXECUTING, event_type=ev.INTENT_EXECUTING)
    return made
