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


# -- the live view moves, says what happens now, and fits (issue 11, item 17) ---------------
LONG_ID = "QLI-" + "01JABCDEFGHJKMNPQRSTVWXYZ0" * 3


class _Clock:
    """Time that moves only when the test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _lines(view: LiveView, width: int) -> list[str]:
    console = Console(width=width, record=True)
    console.print(view.render())
    return console.export_text().splitlines()


def _busy_view(clock: _Clock) -> LiveView:
    view = LiveView(LONG_ID, clock=clock)
    title = "a title far longer than any terminal is wide " * 4
    view.apply(_ev(1, "intent.planning", status="planning"))
    view.apply(_ev(2, "llm.usage", input_tokens=123_456, output_tokens=78_901, cost_usd=None))
    view.apply(
        _ev(
            3,
            "intent.planned",
            status="executing",
            tasks=[{"id": f"QL-DEV-00{i}", "type": "codegen", "title": title} for i in (1, 2)],
        )
    )
    view.apply(_ev(4, "task.started", task_id="QL-DEV-001", status="running"))
    view.apply(_ev(5, "task.phase", task_id="QL-DEV-001", phase="checks", attempt=2))
    return view


def test_something_is_shown_before_the_first_event() -> None:
    text = "\n".join(_lines(LiveView("QLI-X", clock=_Clock()), 80))
    assert "starting: planning" in text
    assert "QLI-X" in text and "queued" in text


def test_the_clock_moves_between_renders_without_events() -> None:
    clock = _Clock()
    view = _busy_view(clock)
    clock.now += 3.5
    first = "\n".join(_lines(view, 120))
    clock.now += 62.0  # no event in between
    second = "\n".join(_lines(view, 120))
    assert "3.5 s" in first and "1m05s" in second, (first, second)
    # The running task's own clock too (since it started).
    assert any("QL-DEV-001" in line and "1m05s" in line for line in second.splitlines())


def test_phases_of_the_intent_and_of_running_tasks_are_shown() -> None:
    clock = _Clock()
    view = _busy_view(clock)
    text = "\n".join(_lines(view, 120))
    assert "running tasks: 1 running" in text
    row = next(line for line in text.splitlines() if line.startswith("QL-DEV-001"))
    assert "checks after repair 1" in row
    view.apply(_ev(6, "task.repairing", task_id="QL-DEV-001", attempt=3, failures=2))
    assert view.tasks["QL-DEV-001"]["phase"] == "repair 2: model call with the failures"
    view.apply(_ev(7, "task.succeeded", task_id="QL-DEV-001", status="succeeded"))
    row = next(line for line in _lines(view, 120) if line.startswith("QL-DEV-001"))
    assert "repair" not in row  # a finished task shows no phase
    for seq, (type_, payload, shown) in enumerate(
        [
            ("intent.phase", {"phase": "validating", "round": 1}, "validating the project"),
            ("task.validated", {"task_id": None, "attempt": 1, "ok": True}, "review gate"),
            ("intent.packaging", {"status": "packaging"}, "packaging"),
            ("intent.completed", {"status": "completed"}, "completed"),
        ],
        start=8,
    ):
        clock.now += 7.0
        view.apply(_ev(seq, type_, **payload))
        clock.now += 2.0
        now_line = next(line for line in _lines(view, 80) if line.startswith("now"))
        assert shown in now_line and "2.0 s" in now_line, now_line


def test_the_header_fits_80_and_120_columns() -> None:
    clock = _Clock()
    view = _busy_view(clock)
    clock.now += 4000.0
    for width in (40, 80, 120):
        lines = _lines(view, width)
        assert max(len(line) for line in lines) <= width, (width, lines)
        assert lines[0].count("\n") == 0 and "1h06m" in lines[0], lines[0]
    short = LiveView("QLI-01JABCDEFGHJKMNPQRSTVWXYZ", clock=clock)
    short.apply(_ev(1, "llm.usage", input_tokens=1_234, output_tokens=5, cost_usd=0.25))
    wide = _lines(short, 120)[0]
    assert "QLI-01JABCDEFGHJKMNPQRSTVWXYZ" in wide and "1,239 tokens" in wide, wide
    assert "$0.2500" in wide
    narrow = _lines(short, 60)[0]  # the less important parts go first, the id stays whole
    assert "QLI-01JABCDEFGHJKMNPQRSTVWXYZ" in narrow and "tokens" not in narrow, narrow


def test_hostile_phase_and_title_text_is_shown_as_data() -> None:
    view = LiveView("QLI-X", clock=_Clock())
    view.apply(
        _ev(
            1,
            "intent.planned",
            status="executing",
            tasks=[{"id": "QL-DEV-001", "type": "codegen", "title": "[bold]x\x1b[2J"}],
        )
    )
    view.apply(_ev(2, "task.started", task_id="QL-DEV-001", status="running"))
    view.apply(_ev(3, "task.phase", task_id="QL-DEV-001", phase="\x1b]0;t\x07", attempt=1))
    text = "\n".join(_lines(view, 200))
    assert "\x1b" not in text and "\\x1b]0;t\\x07" in text and "[bold]x\\x1b[2J" in text


def test_describe_says_which_phase_starts() -> None:
    checks = describe(_ev(12, "task.phase", task_id="QL-DEV-001", phase="checks", attempt=2))
    assert checks == "[  12] task.phase QL-DEV-001 (attempt 2): checks in the sandbox"
    project = describe(_ev(20, "intent.phase", phase="validating", round=1))
    assert project == (
        "[  20] intent.phase (round 1): validating the project in the sandbox (build and tests)"
    )
