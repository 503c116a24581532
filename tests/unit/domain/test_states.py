from __future__ import annotations

import pytest

from qlp.domain.states import (
    CANCELLABLE,
    DECIDABLE,
    RESUMABLE,
    RUNNABLE,
    STARTABLE,
    TASKS_CANCELLABLE,
    TASKS_REQUEUED_ON_RESUME,
    IntentStatus,
    TaskStatus,
    TransitionError,
    check_intent_transition,
    check_task_transition,
    require_state,
)


def test_terminal_intents_cannot_move_except_resume() -> None:
    with pytest.raises(TransitionError):
        check_intent_transition(IntentStatus.COMPLETED, IntentStatus.EXECUTING)
    with pytest.raises(TransitionError):
        check_intent_transition(IntentStatus.QUEUED, IntentStatus.COMPLETED)
    check_intent_transition(IntentStatus.CANCELLED, IntentStatus.EXECUTING)


def test_task_must_run_before_it_succeeds() -> None:
    with pytest.raises(TransitionError):
        check_task_transition(TaskStatus.PENDING, TaskStatus.SUCCEEDED)
    check_task_transition(TaskStatus.PENDING, TaskStatus.RUNNING)
    check_task_transition(TaskStatus.RUNNING, TaskStatus.SUCCEEDED)
    assert TaskStatus.SKIPPED.is_terminal and not TaskStatus.RUNNING.is_terminal


def test_a_refused_move_is_a_conflict_in_the_qlp_error_tree() -> None:
    """The faces map it without knowing it: 409 `invalid_state`, the CLI's one line, exit 2."""
    from qlp.api.problems import classify
    from qlp.errors import ConflictError, QLPError

    with pytest.raises(TransitionError) as refused:
        check_intent_transition(IntentStatus.REJECTED, IntentStatus.CANCELLED, "QLI-1")
    assert isinstance(refused.value, ConflictError) and isinstance(refused.value, QLPError)
    assert not isinstance(refused.value, ValueError)
    assert refused.value.exit_code == 2
    assert refused.value.current == "rejected"
    assert str(refused.value) == "intent QLI-1 cannot go from rejected to cancelled"
    assert classify(refused.value) == (409, "invalid_state", {})


def test_action_state_sets_agree_with_the_transitions() -> None:
    """Each action's set is defined once (domain/states.py) and only names states from
    which the move it makes is allowed."""
    for status in CANCELLABLE:
        check_intent_transition(status, IntentStatus.CANCELLED)
    for status in RESUMABLE:
        check_intent_transition(status, IntentStatus.EXECUTING)
    for status in DECIDABLE:
        for after in (IntentStatus.PACKAGING, IntentStatus.EXECUTING, IntentStatus.REJECTED):
            check_intent_transition(status, after)
    for status in TASKS_REQUEUED_ON_RESUME:
        check_task_transition(status, TaskStatus.PENDING)
    for status in TASKS_CANCELLABLE:
        check_task_transition(status, TaskStatus.CANCELLED)
    assert STARTABLE == RUNNABLE | RESUMABLE
    assert not any(s.is_terminal for s in RUNNABLE | DECIDABLE)
    assert {s for s in IntentStatus if s.is_terminal} - RESUMABLE == {
        IntentStatus.COMPLETED,
        IntentStatus.REJECTED,
    }


def test_require_state_names_the_intent_its_state_and_why() -> None:
    require_state("QLI-1", IntentStatus.REVIEWING, DECIDABLE, "not waiting for review")
    with pytest.raises(TransitionError, match=r"^intent QLI-1 is completed; nothing to cancel$"):
        require_state("QLI-1", IntentStatus.COMPLETED, CANCELLABLE, "nothing to cancel")
