from __future__ import annotations

from datetime import UTC, datetime

from rich.console import Console

from qlp.cli.render import LiveView, describe
from qlp.domain.events import Event

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def _ev(seq: int, type_: str, **payload: object) -> Event:
    return Event(seq=seq, intent_id="QLI-X", type=type_, at=NOW, payload=dict(payload))


def _text(view: LiveView) -> str:
    console = Console(width=140, record=True)
    console.print(view.render())
    return console.export_text()


def test_live_view_follows_events() -> None:
    view = LiveView("QLI-X")
    view.apply(_ev(1, "llm.usage", task_id=None, input_tokens=100, output_tokens=20, cost_usd=0.5))
    view.apply(
        _ev(
            2,
            "intent.planned",
            status="executing",
            tasks=[{"id": "QL-DEV-001", "type": "codegen", "title": "core"}],
        )
    )
    view.apply(_ev(3, "task.started", task_id="QL-DEV-001", status="running"))
    view.apply(
        _ev(4, "llm.usage", task_id="QL-DEV-001", input_tokens=30, output_tokens=5, cost_usd=None)
    )
    assert view.tokens == 155
    assert view.tasks["QL-DEV-001"]["tokens"] == 35
    assert view.tasks["QL-DEV-001"]["status"] == "running"
    assert not view.cost_known
    text = _text(view)
    assert "155 tokens" in text
    assert "some prices unknown" in text
    assert "0/1 tasks" in text


def test_describe_names_task_and_problem() -> None:
    line = describe(
        _ev(9, "task.answer_rejected", task_id="QL-DEV-001", attempt=1, problem="not valid JSON")
    )
    assert line == "[   9] task.answer_rejected QL-DEV-001 (attempt 1): not valid JSON"
