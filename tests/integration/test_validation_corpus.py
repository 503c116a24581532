"""The labelled corpus, checked by the real tools in the real sandbox.

Every expected finding must be reported (recall), no clean file may get a finding that blocks
the security gate (precision), and every corpus file must carry a label. The tools run once
for the module over a workspace holding the whole corpus.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from qlp.config import Settings
from qlp.domain.findings import CheckStatus
from qlp.engine.wiring import make_sandbox
from qlp.validation import ValidationConfig, ValidationReport, validate
from tests.corpus.labels import (
    Expectation,
    Label,
    blocking,
    copy_corpus,
    corpus_files,
    gate_metrics,
    load_labels,
)

LABELS = load_labels()
EXPECTATIONS = [e for label in LABELS for e in label.expect]


@pytest.fixture(scope="module")
async def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ValidationReport]:
    if shutil.which("bwrap") is None:
        pytest.skip("bubblewrap is not installed (apt-get install bubblewrap)")
    home = tmp_path_factory.mktemp("home")
    workspace = tmp_path_factory.mktemp("corpus")
    copy_corpus(workspace)
    sandbox = make_sandbox(Settings(home=home))
    sandbox.check()
    async with sandbox.session(workspace) as session:
        return workspace, await validate(session, workspace, config=ValidationConfig())


@pytest.fixture
def report(run: tuple[Path, ValidationReport]) -> ValidationReport:
    return run[1]


def test_every_corpus_file_is_labelled() -> None:
    assert corpus_files() == sorted(label.path for label in LABELS)


def test_every_security_tool_ran(report: ValidationReport) -> None:
    for name in ("python.bandit", "python.ruff", "semgrep", "terraform.checkov"):
        check = report.check(name)
        assert check is not None
        assert check.status == CheckStatus.FAILED, (name, check.status, check.detail)
    assert report.check("dockerfile.checkov") is not None
    assert report.not_run == []
    assert report.errors == []


def test_a_project_without_tests_has_no_test_verdict(report: ValidationReport) -> None:
    pytest_check = report.check("python.pytest")
    assert pytest_check is not None
    assert pytest_check.status == CheckStatus.SKIPPED_NOT_APPLICABLE
    assert report.tests_ok is None
    assert report.scores.tests is None
    assert report.scores.to_dict()["tests"] is None
    assert 'tests="0"' in report.junit_xml()


@pytest.mark.parametrize("expected", EXPECTATIONS, ids=str)
def test_expected_finding_is_reported(report: ValidationReport, expected: Expectation) -> None:
    mine = [f for f in report.findings if f.path == expected.path]
    assert any(expected.matches(f) for f in mine), [
        (f.tool, f.rule_id, f.severity.value, f.line, f.cwe) for f in mine
    ]


@pytest.mark.parametrize("label", LABELS, ids=lambda label: label.path)
def test_gate_decision_matches_label(report: ValidationReport, label: Label) -> None:
    found = blocking(report.findings, label.path)
    if label.blocks:
        assert found, f"{label.path} must block the gate"
    else:
        assert not found, [(f.tool, f.rule_id, f.line, f.message) for f in found]


def test_precision_and_recall_are_perfect_on_the_corpus(report: ValidationReport) -> None:
    metrics = gate_metrics(report.findings)
    assert (metrics.precision, metrics.recall) == (1.0, 1.0)
    assert metrics.expectations_met == metrics.expectations
    assert report.high_findings
    assert report.scores.security == 0


def test_tools_leave_nothing_in_the_workspace(run: tuple[Path, ValidationReport]) -> None:
    workspace, _ = run
    left = sorted(p.relative_to(workspace).as_posix() for p in workspace.rglob("*") if p.is_file())
    assert left == sorted(label.path for label in LABELS)


def test_the_review_gate_blocks_on_the_findings(report: ValidationReport) -> None:
    from qlp.review.gate import GateInput, Policy, Verdict, evaluate

    gate = evaluate(
        GateInput(
            syntax_ok=report.syntax_ok,
            tests_ok=report.tests_ok,
            high_findings=len(report.high_findings),
            overall_score=report.scores.overall,
            not_run_required=tuple(report.blocking(ValidationConfig().required_checks)),
        ),
        policy=Policy.AUTO,
        threshold=80,
    )
    assert gate.verdict == Verdict.REVIEW
    assert "security" in [g.name for g in gate.failed]
    cwes = {f.cwe for f in report.high_findings if f.path.startswith("py/")}
    assert {"CWE-89", "CWE-78", "CWE-95", "CWE-798"} <= cwes
