from __future__ import annotations

import pytest
from pydantic import ValidationError

from qlp.domain.plan import (
    Plan,
    PlanInvalid,
    find_cycle,
    topological_order,
    transitive_dependencies,
    transitive_dependents,
    validate_plan,
)
from tests.support import plan_task


def _plan(*tasks: dict[str, object]) -> Plan:
    return Plan.model_validate({"summary": "s", "tasks": list(tasks)})


def test_valid_plan_passes_and_orders_dependencies_first() -> None:
    plan = _plan(
        plan_task("QL-DOC-001", ["QL-DEV-001", "QL-TST-001"]),
        plan_task("QL-TST-001", ["QL-DEV-001"]),
        plan_task("QL-DEV-001"),
    )
    validate_plan(plan, max_tasks=10)
    assert topological_order(plan.tasks) == ["QL-DEV-001", "QL-TST-001", "QL-DOC-001"]


def test_priority_breaks_ties_then_id() -> None:
    plan = _plan(
        plan_task("QL-DEV-002", priority=1),
        plan_task("QL-DEV-001", priority=3),
        plan_task("QL-DEV-003", priority=1),
    )
    assert topological_order(plan.tasks) == ["QL-DEV-002", "QL-DEV-003", "QL-DEV-001"]


@pytest.mark.parametrize(
    ("tasks", "message"),
    [
        ([plan_task("QL-DEV-001", ["QL-DEV-001"])], "depends on itself"),
        (
            [
                plan_task("QL-DEV-001", ["QL-DEV-003"]),
                plan_task("QL-DEV-002", ["QL-DEV-001"]),
                plan_task("QL-DEV-003", ["QL-DEV-002"]),
            ],
            "cycle: QL-DEV-001 -> QL-DEV-003 -> QL-DEV-002 -> QL-DEV-001",
        ),
        ([plan_task("QL-DEV-001", ["QL-TST-404"])], "unknown task QL-TST-404"),
        ([plan_task("QL-DEV-001"), plan_task("QL-DEV-001")], "used more than once"),
        ([{**plan_task("QL-DEV-001"), "type": "test"}], "id prefix must be QL-TST-"),
        ([{**plan_task("QL-DEV-001"), "id": "TASK-1"}], "is not of the form"),
        (
            [plan_task("QL-DEV-001", ["QL-DEV-002", "QL-DEV-002"]), plan_task("QL-DEV-002")],
            "more than once",
        ),
    ],
)
def test_invalid_plans_are_named_precisely(tasks: list[dict[str, object]], message: str) -> None:
    with pytest.raises(PlanInvalid, match=message.replace("(", r"\(")):
        validate_plan(_plan(*tasks), max_tasks=10)


def test_task_limit() -> None:
    plan = _plan(*(plan_task(f"QL-DEV-{i:03d}") for i in range(1, 4)))
    with pytest.raises(PlanInvalid, match="3 tasks but at most 2"):
        validate_plan(plan, max_tasks=2)


def test_unknown_type_and_extra_fields_are_schema_errors() -> None:
    with pytest.raises(ValidationError):
        _plan({**plan_task("QL-DEV-001"), "type": "deploy"})
    with pytest.raises(ValidationError):
        _plan({**plan_task("QL-DEV-001"), "owner": "me"})
    with pytest.raises(ValidationError):
        Plan.model_validate({"tasks": []})


def test_find_cycle_none_on_dag_and_transitive_helpers() -> None:
    deps = {"a": [], "b": ["a"], "c": ["a"], "d": ["b", "c"]}
    assert find_cycle(deps) is None
    assert transitive_dependents(deps, "a") == {"b", "c", "d"}
    assert transitive_dependents(deps, "d") == set()
    assert transitive_dependencies(deps, "d") == ["b", "c", "a"]
