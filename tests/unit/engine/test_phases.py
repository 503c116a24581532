"""The events that say what an intent is doing now (issue 11, item 17): every phase starts
with an event, in order, so `qlp run`, the WebSocket stream and `GET /events` can show it.
Scripted model on 127.0.0.1, real sandbox, real PostgreSQL."""

from __future__ import annotations

from pathlib import Path

from qlp.domain.events import Event
from qlp.domain.states import IntentStatus
from tests.support import PLAN_WHEN, files_answer, plan_answer, plan_task, run_intent, scenario
from tests.support import task_when as when

GOOD = "def add(a: int, b: int) -> int:\n    return a + b\n"
TEST = "from calc import add\n\n\ndef test_add() -> None:\n    assert add(2, 3) == 5\n"
README = "# calc\n\nAdds numbers.\n\n```sh\npython -m pytest\n```\n"
# The phases and the events that start them (docs/ARCHITECTURE.md, "Phases").
MARKS = {
    "intent.planning",
    "intent.planned",
    "task.started",
    "task.answer_rejected",
    "task.phase",
    "task.repairing",
    "task.succeeded",
    "intent.phase",
    "review.gated",
    "intent.packaging",
    "intent.completed",
}


def _mark(e: Event) -> tuple[object, ...]:
    p = e.payload
    if e.type == "task.phase":
        return (e.type, p["task_id"], p["phase"], p["attempt"])
    if e.type == "intent.phase":
        return (e.type, p["phase"], p["round"])
    if e.type in ("task.answer_rejected", "task.repairing"):
        return (e.type, p["task_id"], p["attempt"])
    return (e.type, p["task_id"]) if "task_id" in p else (e.type,)


async def test_each_phase_starts_with_an_event_in_order(qlp_home: Path, db_url: str) -> None:
    script = [
        {
            "when": PLAN_WHEN,
            "content": plan_answer(
                [
                    plan_task("QL-DEV-001"),
                    plan_task("QL-TST-001", ["QL-DEV-001"]),
                    plan_task("QL-DOC-001", ["QL-DEV-001"]),
                ]
            ),
        },
        {"when": when("QL-DEV-001"), "content": "not JSON at all"},  # re-asked
        {"when": "not valid JSON", "content": files_answer({"calc.py": "def add(a, b)\n"})},
        {"when": when("QL-DEV-001"), "content": files_answer({"calc.py": GOOD})},  # the repair
        {"when": when("QL-TST-001"), "content": files_answer({"test_calc.py": TEST})},
        {"when": when("QL-DOC-001"), "content": files_answer({"README.md": README})},
    ]
    settings = {"validation_enabled": True, "max_parallel_tasks": 1}
    async with scenario(qlp_home, db_url, script, **settings) as (rt, _):
        out = await run_intent(rt)
    assert out.intent.status == IntentStatus.COMPLETED, out.intent.error
    marks = [_mark(e) for e in out.events if e.type in MARKS]
    # Intent-level phases, in order; the tasks' run between "planned" and "validating".
    assert [m for m in marks if "task" not in m[0]] == [
        ("intent.planning",),
        ("intent.planned",),
        ("intent.phase", "validating", 1),  # the sandboxed run of the whole project
        ("review.gated",),
        ("intent.packaging",),
        ("intent.completed",),
    ]
    planned, validating = (
        marks.index(("intent.planned",)),
        marks.index(("intent.phase", "validating", 1)),
    )
    assert all("task" in m[0] for m in marks[planned + 1 : validating])
    assert [m for m in marks if m[1:2] == ("QL-DEV-001",)] == [
        ("task.started", "QL-DEV-001"),  # the model call
        ("task.answer_rejected", "QL-DEV-001", 1),  # the model call again, attempt 2
        ("task.phase", "QL-DEV-001", "checks", 1),
        ("task.repairing", "QL-DEV-001", 2),  # repair round 1: the model with the failures
        ("task.phase", "QL-DEV-001", "checks", 2),
        ("task.succeeded", "QL-DEV-001"),
    ]
    for task_id in ("QL-TST-001", "QL-DOC-001"):
        assert [m for m in marks if m[1:2] == (task_id,)] == [
            ("task.started", task_id),
            ("task.phase", task_id, "checks", 1),
            ("task.succeeded", task_id),
        ]
    # Each check's start comes before its result, and the project's run before its result.
    types = [e.type for e in out.events]
    project = next(i for i, e in enumerate(out.events) if e.type == "intent.phase")
    assert out.events[project + 1].type == "task.validated"
    assert out.events[project + 1].payload["task_id"] is None
    for i, e in enumerate(out.events):
        if e.type == "task.phase":
            after = out.events[i + 1 :]
            result = next(x for x in after if x.type == "task.validated")
            assert result.payload["task_id"] == e.payload["task_id"]
            assert result.payload["attempt"] == e.payload["attempt"]
    assert types.count("task.validated") == 5
