"""The score formulas of docs/VALIDATION.md, and n/a for what did not run."""

from __future__ import annotations

from qlp.domain.findings import (
    Category,
    CheckResult,
    CheckStatus,
    Finding,
    Scores,
    Severity,
    score_values,
)
from qlp.validation.checks.docs import DocsFacts
from qlp.validation.junit import TestsSummary
from qlp.validation.scoring import (
    ScoreInputs,
    docs_score,
    lint_score,
    overall,
    score,
    security_score,
    syntax_score,
)
from qlp.validation.scoring import tests_score as score_tests


def finding(path: str, line: int, sev: Severity, cat: Category, cwe: str | None = None,
            tool: str = "t", rule: str = "r") -> Finding:  # fmt: skip
    return Finding(tool, rule, sev, path, line, "m", cwe=cwe, category=cat)


def check(name: str, files: tuple[str, ...], findings: tuple[Finding, ...] = (),
          status: CheckStatus | None = None) -> CheckResult:  # fmt: skip
    st = status or (CheckStatus.FAILED if findings else CheckStatus.PASSED)
    return CheckResult(name, "t", st, files, findings=findings)


def test_syntax_is_the_share_of_files_that_parse() -> None:
    bad = finding("b.py", 1, Severity.HIGH, Category.SYNTAX)
    checks = [check("python.compile", ("a.py", "b.py", "c.py", "d.py"), (bad,))]
    assert syntax_score(checks) == 75
    assert syntax_score([check("python.compile", ("a.py",), status=CheckStatus.NOT_RUN)]) is None
    assert syntax_score([]) is None


def test_tests_blend_pass_rate_and_coverage() -> None:
    assert score_tests(TestsSummary(passed=3, failed=1, ran=True)) == 75
    assert score_tests(TestsSummary(passed=4, ran=True, coverage_percent=50.0)) == 85
    assert score_tests(TestsSummary(passed=1, errors=1, ran=True, coverage_percent=100.0)) == 65
    assert score_tests(TestsSummary()) is None
    assert score_tests(TestsSummary(skipped=3, ran=True)) is None


def test_security_penalties_merge_tools_on_one_weakness() -> None:
    ran = [check("semgrep", ("a.py",))]
    same_line = [
        finding("a.py", 3, Severity.HIGH, Category.SECURITY, "CWE-78", tool="semgrep"),
        finding("a.py", 3, Severity.HIGH, Category.SECURITY, "CWE-78", tool="bandit"),
        finding("a.py", 3, Severity.MEDIUM, Category.SECURITY, "CWE-78", tool="ruff"),
    ]
    assert security_score(ran, same_line) == 80
    more = [*same_line, finding("a.py", 9, Severity.MEDIUM, Category.SECURITY, "CWE-89")]
    assert security_score(ran, more) == 72
    crit = [finding("a.py", i, Severity.CRITICAL, Category.SECURITY, rule=str(i)) for i in range(5)]
    assert security_score(ran, crit) == 0
    lint_only = [finding("a.py", 1, Severity.MEDIUM, Category.LINT)]
    assert security_score(ran, lint_only) == 100
    assert security_score([check("semgrep", ("a.py",), status=CheckStatus.ERROR)], []) is None


def test_lint_density_with_a_floor_of_100_lines() -> None:
    ran = [check("python.ruff", ("a.py",))]
    one_medium = [finding("a.py", 1, Severity.MEDIUM, Category.LINT)]
    assert lint_score(ran, one_medium, {"a.py": 10}) == 90
    assert lint_score(ran, one_medium, {"a.py": 1000}) == 99
    many = [finding("a.py", i, Severity.LOW, Category.LINT, rule=str(i)) for i in range(30)]
    assert lint_score(ran, many, {"a.py": 100}) == 0
    info = [finding("a.py", 1, Severity.INFO, Category.LINT)]
    assert lint_score(ran, info, {}) == 100
    assert lint_score([], one_medium, {}) is None


def test_docs() -> None:
    assert docs_score(DocsFacts(1, 1, 0, 0)) == 100
    assert docs_score(DocsFacts(1, 0, 0, 0)) == 30
    assert docs_score(DocsFacts(1, 1, 2, 1)) == 85
    assert docs_score(DocsFacts(0, 0, 0, 0)) is None
    assert docs_score(None) is None


def test_overall_weights_only_applicable_dimensions() -> None:
    assert overall({"syntax": 100, "tests": None, "security": 60, "lint": None, "docs": None}) == 80
    assert overall(dict.fromkeys(("syntax", "tests", "security", "lint", "docs"))) is None
    full = {"syntax": 100, "tests": 50, "security": 100, "lint": 100, "docs": 100}
    assert overall(full) == 85


def test_score_puts_it_together() -> None:
    scores = score(
        ScoreInputs(
            checks=[check("python.compile", ("a.py",)), check("semgrep", ("a.py",))],
            findings=[],
            tests=TestsSummary(),
            docs=None,
            lines={},
        )
    )
    assert (scores.syntax, scores.security, scores.tests, scores.overall) == (100, 100, None, 100)
    assert scores.to_dict()["tests"] is None


def test_n_a_is_null_in_every_dict_and_stored_strings_are_read_as_null() -> None:
    # One form for the manifest (its schema: integer or null), API answers and --json.
    assert Scores(syntax=90).to_dict() == {
        "syntax": 90,
        "tests": None,
        "security": None,
        "lint": None,
        "docs": None,
        "overall": None,
    }
    # Review rounds stored before null was used hold the string "n/a".
    assert score_values({"tests": "n/a", "overall": 80, "odd": True}) == {
        "tests": None,
        "overall": 80,
        "odd": None,
    }
