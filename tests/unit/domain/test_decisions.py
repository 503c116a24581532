from __future__ import annotations

import dataclasses

import pytest

from qlp.domain.decisions import (
    DECISION_KINDS,
    Approve,
    Reject,
    RequestChanges,
    parse_decision,
)
from qlp.errors import UserInputError


def test_each_kind_is_parsed_into_its_own_type_with_its_fields() -> None:
    assert parse_decision("approve") == Approve()
    assert parse_decision("approve", reason="fine") == Approve("fine")
    assert parse_decision("reject", reason="no tests") == Reject("no tests")
    changes = parse_decision("request_changes", reason="docs", tasks=["QL-DOC-001", "QL-DEV-001"])
    assert changes == RequestChanges("docs", ("QL-DEV-001", "QL-DOC-001"))
    assert [d.kind for d in (Approve, Reject, RequestChanges)] == list(DECISION_KINDS)


@pytest.mark.parametrize(
    ("kind", "reason", "tasks", "message"),
    [
        ("reject", None, [], "reject needs a reason"),
        ("reject", "   ", [], "reject needs a reason"),
        ("request_changes", "", ["QL-DEV-001"], "request_changes needs feedback"),
        ("approve", None, ["QL-DEV-001"], "approve takes no tasks"),
        ("reject", "bad", ["QL-DEV-001"], "reject takes no tasks"),
        ("merge", "x", [], "unknown decision 'merge'"),
    ],
)
def test_a_decision_missing_what_it_needs_is_refused(
    kind: str, reason: str | None, tasks: list[str], message: str
) -> None:
    with pytest.raises(UserInputError, match=message):
        parse_decision(kind, reason=reason, tasks=tasks)


def test_decisions_are_values() -> None:
    changes = RequestChanges("again", ("QL-DEV-001", "QL-DEV-001"))
    assert changes.tasks == ("QL-DEV-001",) and changes.reason == "again"
    with pytest.raises(dataclasses.FrozenInstanceError):
        changes.feedback = "other"  # type: ignore[misc]
    assert hash(Approve("x")) == hash(Approve("x"))
