"""Untrusted text is shown as data, and output without a terminal is neither wrapped nor cut."""

from __future__ import annotations

import io
from datetime import UTC, datetime

import pytest
from rich.console import Console
from rich.table import Table

from qlp.cli import common
from qlp.cli.common import OutputConsole, clip, fail, shorten
from qlp.cli.render import quality
from qlp.cli.safetext import escape, plain, visible
from qlp.store.reviews import ReviewRound

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def _piped() -> tuple[OutputConsole, io.StringIO]:
    out = io.StringIO()
    console = OutputConsole()
    console.file = out
    return console, out


def test_control_characters_are_made_visible() -> None:
    raw = (
        "a\x1b]0;pwned\x07b\x1b[2Jc\x9b31m\r\x00\x7f\u202eevil\u202c\u2066i\u2069\u200f\u2028\udcff"
    )
    assert visible(raw) == (
        "a\\x1b]0;pwned\\x07b\\x1b[2Jc\\x9b31m\\x0d\\x00\\x7f\\u202eevil\\u202c\\u2066i\\u2069"
        "\\u200f\\u2028\\udcff"
    )
    assert visible("line 1\n\tline 2 é 日本 🙂") == "line 1\n\tline 2 é 日本 🙂"
    assert visible("a\nb\tc", one_line=True) == "a\\nb\\tc"
    assert visible(42) == "42"


def test_markup_and_emoji_codes_are_printed_literally() -> None:
    console, out = _piped()
    hostile = "[/x] [bold red]x[/] :smile: \x1b[2J"
    console.print(plain(hostile))
    console.print(f"[bold]label[/] {escape(hostile)}")
    assert out.getvalue() == (
        "[/x] [bold red]x[/] :smile: \\x1b[2J\nlabel [/x] [bold red]x[/] :smile: \\x1b[2J\n"
    )


def test_an_error_message_quoting_user_input_is_data(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`qlp intents show '[/x]'` raised MarkupError inside the error printer itself."""
    console, out = _piped()
    monkeypatch.setattr(common, "err_console", console)
    fail("no intent matches '[/x]\x1b]0;t\x07'")
    assert out.getvalue() == "error: no intent matches '[/x]\\x1b]0;t\\x07'\n"


def test_piped_output_is_not_wrapped_nor_cut() -> None:
    console, out = _piped()
    long = " ".join(f"word{i:03d}" for i in range(100))
    console.print(plain(long))
    table = Table(box=None)
    table.add_column("id")
    table.add_column("text")
    table.add_row("QLK-01M8SS4V6NBBNTTJ303QS14X46", long)
    console.print(table)
    lines = out.getvalue().splitlines()
    assert lines[0] == long
    assert any("QLK-01M8SS4V6NBBNTTJ303QS14X46" in line and long in line for line in lines)
    # A console that is given a width (a test, or COLUMNS on a terminal) keeps it.
    fixed = OutputConsole()
    fixed.file = io.StringIO()
    fixed.width = 40
    assert fixed.width == 40


def test_clip_and_shorten_leave_piped_values_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    long = "alpha beta gamma delta epsilon"
    assert clip(10) == {}  # pytest's stdout is not a terminal
    assert shorten(long, 12) == long
    monkeypatch.setattr(OutputConsole, "piped", property(lambda self: False))
    assert clip(10) == {"max_width": 10, "overflow": "ellipsis", "no_wrap": True}
    assert shorten(long, 12) == "alpha beta…"


def test_gates_carry_their_state_in_words() -> None:
    """Colour was the only signal: piped or under NO_COLOR, pass and fail looked the same."""
    review = ReviewRound(
        intent_id="QLI-X",
        round=1,
        verdict="needs_review",
        gates=[
            {"name": "tests", "passed": True, "detail": "all pass"},
            {"name": "security", "passed": False, "detail": "1 high finding [/x]"},
        ],
        scores={"overall": 70, "coverage": None},
        created_at=NOW,
        decision=None,
    )
    console = Console(width=200, no_color=True, record=True)
    console.print(quality([review], []))
    text = console.export_text()
    assert "gates     tests passed, security FAILED" in text
    assert "security FAILED: 1 high finding [/x]" in text


def test_live_view_on_a_terminal_shows_hostile_text_as_data() -> None:
    from qlp.cli.render import LiveView
    from qlp.domain.events import Event

    hostile = "[/x] \x1b]0;pwned\x07 \x1b[2J \u202eevil"
    view = LiveView("QLI-X")
    for seq, type_, payload in (
        (
            1,
            "intent.planned",
            {"tasks": [{"id": "QL-DEV-001", "type": "codegen", "title": hostile}]},
        ),
        (2, "task.failed", {"task_id": "QL-DEV-001", "status": "failed", "error": hostile}),
    ):
        view.apply(Event(seq=seq, intent_id="QLI-X", type=type_, at=NOW, payload=payload))
    out = io.StringIO()
    Console(file=out, force_terminal=True, width=200).print(view.render())
    text = out.getvalue()
    assert "\x1b]0;pwned" not in text and "\x1b[2J" not in text and "\u202e" not in text
    assert "[/x] \\x1b]0;pwned\\x07 \\x1b[2J \\u202eevil" in text
