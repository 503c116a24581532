"""Where `qlp run` takes its intent from: the argument, `-` (standard input) or --file, each
checked to be non-empty UTF-8 (issue 11, items 9 and 16)."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from qlp.cli.main import _intent_text, app
from qlp.errors import UserInputError


class _Stdin(io.TextIOWrapper):
    pass


def _stdin(monkeypatch: pytest.MonkeyPatch, data: bytes) -> None:
    monkeypatch.setattr(sys, "stdin", _Stdin(io.BytesIO(data), encoding="utf-8"))


def test_a_dash_reads_the_intent_from_standard_input(monkeypatch: pytest.MonkeyPatch) -> None:
    _stdin(monkeypatch, "Build a todo CLI\nwith tests, café\n".encode())
    assert _intent_text("-", None) == "Build a todo CLI\nwith tests, café\n"


def test_file_reads_the_intent_from_a_file(tmp_path: Path) -> None:
    path = tmp_path / "intent.txt"
    path.write_text("Build a REST API", encoding="utf-8")
    assert _intent_text(None, path) == "Build a REST API"


def test_the_argument_is_the_intent_itself() -> None:
    assert _intent_text("Build a thing", None) == "Build a thing"


@pytest.mark.parametrize(
    ("argument", "file_data", "stdin", "message"),
    [
        (None, b"caf\xe9", None, "intent.txt: the intent is not valid UTF-8 (byte 4)"),
        ("-", None, b"\xff", "standard input: the intent is not valid UTF-8 (byte 1)"),
        ("-", None, b"  \n", "the intent is empty"),
        (None, b"", None, "the intent is empty"),
        ("x", b"y", None, "not both"),
        (None, None, None, "qlp run --file PATH, or qlp run -"),
        ("caf\udce9", None, None, "the intent is not valid UTF-8 (character 4)"),
    ],
)
def test_bad_intents_are_refused_with_what_to_change(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    argument: str | None,
    file_data: bytes | None,
    stdin: bytes | None,
    message: str,
) -> None:
    path = None
    if file_data is not None:
        path = tmp_path / "intent.txt"
        path.write_bytes(file_data)
    if stdin is not None:
        _stdin(monkeypatch, stdin)
    with pytest.raises(UserInputError) as caught:
        _intent_text(argument, path)
    assert message in caught.value.message
    if path is not None:
        assert str(path) in caught.value.message or "not both" in message


def test_a_missing_file_is_bad_input_before_anything_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("QLP_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("QLP_LLM_PROVIDER", "openai")
    monkeypatch.setenv("QLP_OPENAI_API_KEY", "unused")
    result = CliRunner().invoke(app, ["run", "--file", str(tmp_path / "nope.txt")])
    assert result.exit_code == 2, result.output
    assert "nope.txt" in result.output
    assert not (tmp_path / "home" / "postgres").exists()
