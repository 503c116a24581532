"""The failure digest (loop detection) and the repair brief (what the agent is told)."""

from __future__ import annotations

import json
from dataclasses import replace

from qlp.domain.findings import Category, CheckResult, CheckStatus, Finding, Scores, Severity
from qlp.validation.junit import TestFailure, TestsSummary
from qlp.validation.report import ValidationReport, normalise_message


def make(findings: list[Finding], failures: tuple[TestFailure, ...] = (),
         checks: list[CheckResult] | None = None) -> ValidationReport:  # fmt: skip
    tests = TestsSummary(passed=1, failed=len(failures), failures=failures, ran=True)
    return ValidationReport(
        checks=checks or [],
        findings=findings,
        scores=Scores(),
        tests=tests,
        syntax_ok=not any(f.category == Category.SYNTAX for f in findings),
        tests_ok=not failures,
        not_run=[],
    )


SYNTAX = Finding("python", "syntax-error", Severity.HIGH, "a.py", 3, "SyntaxError: invalid",
                 category=Category.SYNTAX)  # fmt: skip
SQL = Finding("semgrep", "qlp-sql", Severity.HIGH, "db.py", 10, "SQL built", "CWE-89")
MEDIUM = Finding("bandit", "B301", Severity.MEDIUM, "db.py", 4, "pickle", "CWE-502")
LINT = Finding("ruff", "F401", Severity.MEDIUM, "other.py", 1, "unused import",
               category=Category.LINT)  # fmt: skip
FAIL = TestFailure("tests/test_db.py::test_q", "failure", "assert 1 == 2 in 0.03s",
                   "Traceback\n  file /tmp/pytest-of-x/abc/t.py\nE   assert 1 == 2",
                   "tests/test_db.py", 4)  # fmt: skip
OTHER_FAIL = TestFailure("tests/test_other.py::test_x", "error", "boom", "", "tests/test_other.py")


def test_digest_ignores_order_lines_timings_and_temp_paths() -> None:
    a = make([SYNTAX, SQL, LINT], (FAIL, OTHER_FAIL))
    moved = [replace(SYNTAX, line=9, column=4), replace(SQL, line=20)]
    timing = replace(FAIL, message="assert 1 == 2 in 1.20s", text="other /tmp/xyz trace")
    b = make([*reversed(moved), LINT], (OTHER_FAIL, timing))
    assert a.failure_digest() == b.failure_digest()
    assert len(a.failure_digest()) == 64


def test_digest_changes_with_the_failures() -> None:
    base = make([SYNTAX, SQL], (FAIL,))
    assert make([SQL], (FAIL,)).failure_digest() != base.failure_digest()
    assert make([SYNTAX, SQL], ()).failure_digest() != base.failure_digest()
    other_msg = replace(SYNTAX, message="SyntaxError: unexpected indent")
    assert make([other_msg, SQL], (FAIL,)).failure_digest() != base.failure_digest()
    # lint and medium findings do not block the gate: they do not change the digest
    assert make([SYNTAX, SQL, LINT, MEDIUM], (FAIL,)).failure_digest() == base.failure_digest()
    errored = [CheckResult("semgrep", "semgrep", CheckStatus.ERROR, detail="crash 0x7f00aa11")]
    assert make([SYNTAX, SQL], (FAIL,), errored).failure_digest() != base.failure_digest()


def test_normalise_message() -> None:
    assert (
        normalise_message("at 0xdeadbeef in /tmp/abc/x.py took 0.5s") == "at 0x… in /tmp/… took …s"
    )


def test_brief_order_and_own_files_first() -> None:
    report = make([LINT, MEDIUM, SQL, SYNTAX], (OTHER_FAIL, FAIL))
    text = report.repair_brief(["db.py", "tests/test_db.py"], max_chars=10_000)
    heads = [line for line in text.splitlines() if line.startswith("## ")]
    assert heads == [
        "## Syntax errors (1)",
        "## Failing tests (2)",
        "## Security findings (high or critical) (1)",
        "## Other security findings (1)",
        "## Lint (1)",
    ]
    lines = text.splitlines()
    first_test = lines[lines.index("## Failing tests (2)") + 1]
    assert first_test.startswith("- tests/test_db.py::test_q (failure): assert 1 == 2")
    assert "E   assert 1 == 2" in text
    assert "- db.py:10: SQL built (semgrep qlp-sql, high [CWE-89])" in text


def test_brief_is_cut_to_size() -> None:
    many = [replace(SQL, line=i, message=f"SQL built number {i}") for i in range(1, 200)]
    text = make(many).repair_brief([], max_chars=500)
    assert len(text) <= 500
    assert text.startswith("## Security findings (high or critical) (199)")
    assert text.rstrip().endswith("more problem(s) not shown")
    assert make([]).repair_brief([], max_chars=100) == ""


def test_to_dict_is_stable_json() -> None:
    checks = [CheckResult("semgrep", "semgrep", CheckStatus.FAILED, ("db.py",), 1.234, "x", (SQL,))]
    a = make([SQL], (FAIL,), checks)
    b = replace(a, duration_s=99.0, checks=[replace(checks[0], duration_s=5.0)])
    assert json.dumps(a.to_dict(), sort_keys=True) == json.dumps(b.to_dict(), sort_keys=True)
    assert a.to_dict()["findings"][0]["cwe"] == "CWE-89"
    assert "duration_s" in a.to_dict(timings=True)
    assert [f.rule_id for f in a.high_findings] == ["qlp-sql"]
    assert make([SYNTAX]).high_findings == []


def test_blocking_lists_required_checks_without_a_verdict() -> None:
    r = replace(make([]), not_run=["semgrep", "typescript.check"], errors=["python.ruff"])
    assert r.blocking({"semgrep", "python.ruff", "python.bandit"}) == ["python.ruff", "semgrep"]
