"""`--debug`, which every unexpected-error line tells the user to add, works wherever it is
put on the command line (issue 11, item 10)."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from qlp.cli.main import app
from qlp.errors import NotFoundError


@pytest.mark.parametrize(
    "argv",
    [
        ["--debug", "capsule", "verify", "{missing}"],
        ["capsule", "--debug", "verify", "{missing}"],
        ["capsule", "verify", "{missing}", "--debug"],
    ],
)
def test_debug_anywhere_shows_the_traceback(
    argv: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("QLP_HOME", str(tmp_path / "home"))
    missing = str(tmp_path / "missing.qlcapsule")
    result = CliRunner().invoke(app, [a.format(missing=missing) for a in argv])
    # With --debug the error is not turned into one line: it propagates, traceback and all.
    assert isinstance(result.exception, NotFoundError), result.output


def test_without_debug_the_error_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("QLP_HOME", str(tmp_path / "home"))
    result = CliRunner().invoke(app, ["capsule", "verify", str(tmp_path / "missing.qlcapsule")])
    assert result.exit_code != 0
    assert not isinstance(result.exception, NotFoundError)
    assert "no such capsule file" in result.output


def test_debug_after_a_double_dash_is_left_to_the_command() -> None:
    # Everything after `--` belongs to the command (e.g. `qlp sandbox run -- cmd --debug`).
    result = CliRunner().invoke(app, ["version", "--", "--debug"])
    assert result.exit_code == 2  # `version` takes no argument: --debug was not taken as ours
    assert "--debug" in result.output or "unexpected extra argument" in result.output.lower()


def test_version_option_prints_what_the_version_command_prints() -> None:
    runner = CliRunner()
    option, command = runner.invoke(app, ["--version"]), runner.invoke(app, ["version"])
    assert option.exit_code == 0 and command.exit_code == 0, option.output
    assert option.output == command.output and option.output.startswith("qlp ")


def test_shell_completion_is_offered() -> None:
    result = CliRunner().invoke(app, ["--show-completion", "bash"], prog_name="qlp")
    assert result.exit_code == 0, result.output
    assert "complete" in result.output and "qlp" in result.output
