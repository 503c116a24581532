from __future__ import annotations

import pytest

from qlp.domain.states import (
    IntentStatus,
    TaskStatus,
    TransitionError,
    check_intent_transition,
    check_task_transition,
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
