"""Every check family against one small project full of known problems, in the real sandbox.

The project is validated three times for the whole module: in full, with only_files (one
task's files), and in full again after shifting line numbers (the failure digest must hold).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
from defusedxml import ElementTree

from qlp.config import Settings
from qlp.domain.findings import Category, CheckStatus, Severity
from qlp.engine.wiring import make_sandbox
from qlp.validation import ValidationConfig, ValidationReport, validate

PROJECT: dict[str, str] = {
    "README.md": (
        "# Calc\n\nSee [usage](docs/usage.md), [the API](docs/api.md#add) and "
        "[the site](https://example.com). `[code](nowhere.md)` is not a link.\n"
    ),
    "docs/usage.md": "Run `calc`.\n",
    "src/calc/__init__.py": "",
    "src/calc/ops.py": (
        "def add(a: int, b: int) -> int:\n    return a + b\n\n\n"
        "def half(a: float) -> float:\n    return a / 2\n"
    ),
    "tests/test_ops.py": (
        "from calc.ops import add, half\n\n\n"
        "def test_add():\n    assert add(2, 2) == 4\n\n\n"
        "def test_half():\n    assert half(1) == 2, 'half of one is not two'\n"
    ),
    "broken.py": "def f(:\n    pass\n",
    "lint_me.py": "import os\n\n\ndef g(x):\n    return x\n",
    "data/good.json": '{"a": [1, 2]}\n',
    "data/bad.json": '{"a": 1,\n "b": }\n',
    "data/good.yaml": "a: 1\n---\nb: [1, 2]\n",
    "data/bad.yaml": "a: [1\nb: 2\n",
    "data/good.toml": 'a = 1\n[t]\nb = "x"\n',
    "data/bad.toml": "a = 1\nb = \n",
    "infra/bad.tf": 'resource "x" "y" {\n  a = \n}\n',
    "web/ok.js": "export const x = 1;\n",
    "web/bad.js": "const x = ;\n",
    "web/math.test.js": (
        'const test = require("node:test");\nconst assert = require("node:assert");\n'
        'test("adds", () => { assert.strictEqual(1 + 1, 2); });\n'
        'test("breaks", () => { assert.strictEqual(1 + 1, 3); });\n'
    ),
    "web/app.ts": "let a: number = ;\n",
    "scripts/bad.sh": "#!/bin/bash\nif then\n",
    "scripts/run": "#!/bin/bash\necho $1\n",
}


@dataclass
class Runs:
    workspace: Path
    full: ValidationReport
    scoped: ValidationReport
    shifted: ValidationReport
    files_before: list[str]
    files_after: list[str]


def _files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


@pytest.fixture(scope="module")
async def runs(tmp_path_factory: pytest.TempPathFactory) -> Runs:
    if shutil.which("bwrap") is None:
        pytest.skip("bubblewrap is not installed (apt-get install bubblewrap)")
    workspace = tmp_path_factory.mktemp("project")
    for path, text in PROJECT.items():
        (workspace / path).parent.mkdir(parents=True, exist_ok=True)
        (workspace / path).write_text(text)
    before = _files(workspace)
    sandbox = make_sandbox(Settings(home=tmp_path_factory.mktemp("home")))
    sandbox.check()
    config = ValidationConfig()
    async with sandbox.session(workspace) as session:
        full = await validate(session, workspace, config=config)
        scoped = await validate(
            session, workspace, config=config, only_files=["lint_me.py", "web/ok.js"]
        )
        after = _files(workspace)
        for path in ("broken.py", "src/calc/ops.py", "data/bad.json"):
            target = workspace / path
            target.write_text("\n\n" + target.read_text())
        shifted = await validate(session, workspace, config=config)
    return Runs(workspace, full, scoped, shifted, before, after)


def _check(report: ValidationReport, name: str) -> tuple[CheckStatus, list[tuple[str, int | None]]]:
    check = report.check(name)
    assert check is not None, name
    return check.status, [(f.path, f.line) for f in check.findings]


def test_python_compile_reports_the_broken_file(runs: Runs) -> None:
    status, where = _check(runs.full, "python.compile")
    assert status == CheckStatus.FAILED
    assert where == [("broken.py", 1)]
    finding = runs.full.check("python.compile").findings[0]  # type: ignore[union-attr]
    assert finding.category == Category.SYNTAX
    assert finding.severity == Severity.HIGH
    assert "SyntaxError" in finding.message


def test_ruff_reports_lint(runs: Runs) -> None:
    check = runs.full.check("python.ruff")
    assert check is not None
    rules = {(f.path, f.rule_id, f.category) for f in check.findings}
    assert ("lint_me.py", "F401", Category.LINT) in rules


def test_pytest_runs_the_project_tests_with_coverage(runs: Runs) -> None:
    tests = runs.full.tests
    assert (tests.passed, tests.failed) == (2, 2)  # pytest 1 + 1, node --test 1 + 1
    ids = {f.test_id for f in tests.failures}
    assert "tests/test_ops.py::test_half" in ids
    failure = next(f for f in tests.failures if f.test_id == "tests/test_ops.py::test_half")
    assert failure.path == "tests/test_ops.py"
    assert "half of one is not two" in failure.message
    assert tests.coverage_percent is not None and tests.coverage_percent > 50
    assert runs.full.tests_ok is False
    root = ElementTree.fromstring(runs.full.junit_xml())
    assert len(list(root.iter("testcase"))) == 4


def test_node_check_and_node_test(runs: Runs) -> None:
    assert _check(runs.full, "javascript.check") == (CheckStatus.FAILED, [("web/bad.js", 1)])
    check = runs.full.check("javascript.test")
    assert check is not None
    assert check.status == CheckStatus.FAILED
    assert check.detail.startswith("1 passed, 1 failed")


def test_typescript_syntax(runs: Runs) -> None:
    status, where = _check(runs.full, "typescript.check")
    assert status == CheckStatus.FAILED
    assert where == [("web/app.ts", 1)]


def test_shell_syntax_and_shellcheck(runs: Runs) -> None:
    assert _check(runs.full, "shell.syntax") == (CheckStatus.FAILED, [("scripts/bad.sh", 2)])
    check = runs.full.check("shell.shellcheck")
    assert check is not None
    assert ("scripts/run", "SC2086") in {(f.path, f.rule_id) for f in check.findings}


def test_data_and_terraform_parse(runs: Runs) -> None:
    assert _check(runs.full, "data.json") == (CheckStatus.FAILED, [("data/bad.json", 2)])
    assert _check(runs.full, "data.yaml") == (CheckStatus.FAILED, [("data/bad.yaml", 2)])
    assert _check(runs.full, "data.toml") == (CheckStatus.FAILED, [("data/bad.toml", 2)])
    assert _check(runs.full, "terraform.parse") == (CheckStatus.FAILED, [("infra/bad.tf", 2)])


def test_docs_links(runs: Runs) -> None:
    check = runs.full.check("docs")
    assert check is not None
    assert [(f.rule_id, f.path) for f in check.findings] == [("broken-link", "README.md")]
    assert "docs/api.md" in check.findings[0].message
    # README present (70) + 1 of 2 relative links resolve (15)
    assert runs.full.scores.docs == 85


def test_verdicts_and_scores(runs: Runs) -> None:
    report = runs.full
    assert report.syntax_ok is False
    assert report.not_run == [] and report.errors == []
    scores = report.scores
    assert scores.syntax is not None and 0 < scores.syntax < 100
    assert scores.tests is not None and scores.tests < 60
    assert scores.overall is not None
    assert json.loads(json.dumps(report.to_dict())) == report.to_dict()


def test_the_tools_leave_no_files_behind(runs: Runs) -> None:
    assert runs.files_after == runs.files_before


def test_only_files_limits_per_file_checks_but_runs_all_tests(runs: Runs) -> None:
    scoped = runs.scoped
    compile_check = scoped.check("python.compile")
    assert compile_check is not None and compile_check.files == ("lint_me.py",)
    assert compile_check.status == CheckStatus.PASSED
    node = scoped.check("javascript.check")
    assert node is not None and node.status == CheckStatus.PASSED
    assert scoped.check("data.json").status == CheckStatus.SKIPPED_NOT_APPLICABLE  # type: ignore[union-attr]
    assert scoped.syntax_ok is True
    assert scoped.tests.passed + scoped.tests.failed == 4
    assert scoped.scope == ("lint_me.py", "web/ok.js")


def test_failure_digest_ignores_line_shifts_and_changes_with_failures(runs: Runs) -> None:
    assert runs.shifted.failure_digest() == runs.full.failure_digest()
    assert runs.scoped.failure_digest() != runs.full.failure_digest()
    shifted_lines = {f.line for f in runs.shifted.findings if f.path == "broken.py"}
    assert shifted_lines == {3}


def test_repair_brief_orders_failures(runs: Runs) -> None:
    text = runs.full.repair_brief(["src/calc/ops.py", "tests/test_ops.py"], max_chars=20_000)
    syntax_at, tests_at = text.index("## Syntax errors"), text.index("## Failing tests")
    assert syntax_at < tests_at < text.index("## Lint")
    failing = text[tests_at:].splitlines()[1]
    assert failing.startswith("- tests/test_ops.py::test_half")  # the task's own test first
    assert "half of one is not two" in text
    short = runs.full.repair_brief([], max_chars=300)
    assert len(short) <= 300 and "more problem(s) not shown" in short


def test_sarif_holds_every_finding(runs: Runs) -> None:
    sarif = runs.full.sarif()
    assert sarif["version"] == "2.1.0"
    results = [r for run in sarif["runs"] for r in run["results"]]
    assert len(results) == len(runs.full.findings)
