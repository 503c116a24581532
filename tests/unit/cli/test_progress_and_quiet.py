"""`qlp run --quiet` prints only the result; `qlp run` and `qlp replay` show each phase as it
starts (issue 11, items 17 and 19). The real CLI in-process, the fake model on 127.0.0.1,
real PostgreSQL; the output is not a terminal, so progress is one line per event."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from qlp.cli.main import app
from tests.fakes.llm_server import FakeLLMServer
from tests.support import PLAN_WHEN, dag_script, files_answer, plan_answer, plan_task, task_when

GOOD = "def add(a: int, b: int) -> int:\n    return a + b\n"
TEST = "from calc import add\n\n\ndef test_add() -> None:\n    assert add(2, 3) == 5\n"
README = "# calc\n\nAdds numbers.\n\n```sh\npython -m pytest\n```\n"
CALC = [
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
    {"when": task_when("QL-DEV-001"), "content": files_answer({"calc.py": GOOD})},
    {"when": task_when("QL-TST-001"), "content": files_answer({"test_calc.py": TEST})},
    {"when": task_when("QL-DOC-001"), "content": files_answer({"README.md": README})},
]
EVENT_LINE = re.compile(r"^\[\s*\d+\] ", re.MULTILINE)


def _env(monkeypatch: pytest.MonkeyPatch, home: Path, db_url: str, server: FakeLLMServer) -> None:
    for name, value in {
        "QLP_HOME": str(home),
        "QLP_DATABASE_URL": db_url,
        "QLP_LLM_PROVIDER": "openai",
        "QLP_LLM_MODEL": "gpt-4o-mini",
        "QLP_LLM_BASE_URL": server.base_url,
        "QLP_OPENAI_API_KEY": "test-key",
        "QLP_LLM_RETRY_BASE_S": "0.01",
        "QLP_LLM_TIMEOUT_S": "10",
        "QLP_MAX_PARALLEL_TASKS": "1",
    }.items():
        monkeypatch.setenv(name, value)


@pytest.fixture
def one_task(
    monkeypatch: pytest.MonkeyPatch, qlp_home: Path, db_url: str
) -> Iterator[FakeLLMServer]:
    with FakeLLMServer(dag_script({"QL-DEV-001": []})) as server:
        _env(monkeypatch, qlp_home, db_url, server)
        monkeypatch.setenv("QLP_VALIDATE", "false")
        yield server


@pytest.mark.parametrize("argv", [["-q", "run", "build it"], ["run", "build it", "--quiet"]])
def test_quiet_run_prints_only_the_id_and_status(one_task: FakeLLMServer, argv: list[str]) -> None:
    result = CliRunner().invoke(app, argv)
    assert result.exit_code == 0, result.output
    assert re.fullmatch(r"QLI-\w+ completed\n", result.stdout), result.stdout
    assert result.stderr == ""


def test_quiet_json_run_prints_the_json_only(one_task: FakeLLMServer) -> None:
    result = CliRunner().invoke(app, ["run", "--json", "build it", "-q"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["status"] == "completed"


def test_without_quiet_a_piped_run_prints_each_event(one_task: FakeLLMServer) -> None:
    result = CliRunner().invoke(app, ["run", "build it"])
    assert result.exit_code == 0, result.output
    assert "queued" in result.stdout and "intent.planning" in result.stdout
    assert len(EVENT_LINE.findall(result.stdout)) >= 5, result.stdout


def test_quiet_failure_keeps_the_exit_code_and_says_why_on_stderr(
    monkeypatch: pytest.MonkeyPatch, qlp_home: Path, db_url: str
) -> None:
    # The model answers nothing the plan can use: planning fails.
    with FakeLLMServer([{"when": PLAN_WHEN, "content": "no plan"}] * 3) as server:
        _env(monkeypatch, qlp_home, db_url, server)
        monkeypatch.setenv("QLP_VALIDATE", "false")
        monkeypatch.setenv("QLP_LLM_MAX_REASKS", "0")
        result = CliRunner().invoke(app, ["run", "build it", "-q"])
    assert result.exit_code == 1, result.output
    assert re.fullmatch(r"QLI-\w+ failed\n", result.stdout), result.stdout
    assert "error:" in result.stderr and "qlp resume" in result.stderr
    assert not EVENT_LINE.search(result.stdout + result.stderr)


def test_replay_shows_progress_like_run(
    monkeypatch: pytest.MonkeyPatch, qlp_home: Path, db_url: str
) -> None:
    with FakeLLMServer(CALC) as server:
        _env(monkeypatch, qlp_home, db_url, server)
        ran = CliRunner().invoke(app, ["run", "--json", "add two numbers"])
        assert ran.exit_code == 0, ran.output
        capsule = json.loads(ran.stdout)["capsules"][0]["uri"].removeprefix("file://")
        replayed = CliRunner().invoke(app, ["replay", capsule])
        quiet = CliRunner().invoke(app, ["replay", capsule, "--quiet"])
    assert replayed.exit_code == 0, replayed.output
    out = replayed.stdout
    # Every phase, as it started, before the result.
    for shown in (
        "intent.planning",
        "task.started QL-DEV-001",
        "task.phase QL-DEV-001 (attempt 1): checks in the sandbox",
        "intent.phase (round 1): validating the project",
        "intent.packaging",
    ):
        assert shown in out, (shown, out)
    assert out.index("intent.packaging") < out.index("byte-identical"), out
    assert quiet.exit_code == 0, quiet.output
    assert not EVENT_LINE.search(quiet.stdout) and "byte-identical" in quiet.stdout
    assert "replaying as intent" not in quiet.stdout
