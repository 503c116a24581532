"""Scores 0-100 per dimension, and overall. The formulas are in docs/VALIDATION.md; a
dimension none of whose checks ran is None ("n/a"), never a default number."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from qlp.domain.findings import Category, CheckResult, Finding, Scores, Severity
from qlp.validation.checks.docs import DocsFacts
from qlp.validation.junit import TestsSummary

SYNTAX_CHECKS = frozenset(
    {
        "python.compile",
        "javascript.check",
        "typescript.check",
        "shell.syntax",
        "data.json",
        "data.yaml",
        "data.toml",
        "terraform.parse",
    }
)
SECURITY_CHECKS = frozenset(
    {"python.bandit", "python.ruff", "semgrep", "terraform.checkov", "dockerfile.checkov"}
)
LINT_CHECKS = frozenset({"python.ruff", "shell.shellcheck"})

WEIGHTS: Mapping[str, float] = {
    "syntax": 0.25,
    "tests": 0.30,
    "security": 0.25,
    "lint": 0.10,
    "docs": 0.10,
}
SECURITY_PENALTY: Mapping[Severity, int] = {
    Severity.CRITICAL: 40,
    Severity.HIGH: 20,
    Severity.MEDIUM: 8,
    Severity.LOW: 2,
    Severity.INFO: 0,
}
LINT_WEIGHT: Mapping[Severity, float] = {
    Severity.CRITICAL: 2,
    Severity.HIGH: 2,
    Severity.MEDIUM: 2,
    Severity.LOW: 1,
    Severity.INFO: 0,
}
LINT_PER_100_LINES = 5  # points lost per weighted lint finding per 100 lines
MIN_LINT_LINES = 100  # small files are judged as if they had 100 lines
TESTS_PASS_SHARE = 0.7  # with coverage: 70 % pass rate, 30 % line coverage


@dataclass(frozen=True)
class ScoreInputs:
    checks: Sequence[CheckResult]
    findings: Sequence[Finding]
    tests: TestsSummary
    docs: DocsFacts | None
    lines: Mapping[str, int]  # non-blank lines per linted file


def _ran(checks: Sequence[CheckResult], names: frozenset[str]) -> list[CheckResult]:
    return [c for c in checks if c.name in names and c.ran]


def syntax_score(checks: Sequence[CheckResult]) -> int | None:
    ran = _ran(checks, SYNTAX_CHECKS)
    files = {f for c in ran for f in c.files}
    if not files:
        return None
    bad = {f.path for c in ran for f in c.findings if f.category == Category.SYNTAX}
    return round(100 * (len(files) - len(bad & files)) / len(files))


def tests_score(tests: TestsSummary) -> int | None:
    counted = tests.passed + tests.failed + tests.errors
    if not tests.ran or counted == 0:
        return None
    rate = tests.passed / counted
    if tests.coverage_percent is None:
        return round(100 * rate)
    coverage = min(100.0, max(0.0, tests.coverage_percent)) / 100
    return round(100 * (TESTS_PASS_SHARE * rate + (1 - TESTS_PASS_SHARE) * coverage))


def security_key(f: Finding) -> tuple[str, int, str]:
    """Findings of several tools on the same line and weakness are one problem."""
    return (f.path, f.line or 0, f.cwe or f"{f.tool}:{f.rule_id}")


def security_score(checks: Sequence[CheckResult], findings: Sequence[Finding]) -> int | None:
    if not _ran(checks, SECURITY_CHECKS):
        return None
    worst: dict[tuple[str, int, str], Severity] = {}
    for f in findings:
        if f.category != Category.SECURITY:
            continue
        key = security_key(f)
        worst[key] = max(worst.get(key, f.severity), f.severity)
    penalty = sum(SECURITY_PENALTY[s] for s in worst.values())
    return max(0, 100 - penalty)


def lint_score(
    checks: Sequence[CheckResult], findings: Sequence[Finding], lines: Mapping[str, int]
) -> int | None:
    ran = _ran(checks, LINT_CHECKS)
    if not ran:
        return None
    files = {f for c in ran for f in c.files}
    total_lines = max(MIN_LINT_LINES, sum(lines.get(f, 0) for f in files))
    weight = sum(LINT_WEIGHT[f.severity] for f in findings if f.category == Category.LINT)
    return max(0, round(100 - LINT_PER_100_LINES * 100 * weight / total_lines))


def docs_score(facts: DocsFacts | None) -> int | None:
    if facts is None or (facts.required_total == 0 and facts.links_total == 0):
        return None
    required = facts.required_ok / facts.required_total if facts.required_total else 1.0
    links = facts.links_ok / facts.links_total if facts.links_total else 1.0
    return round(100 * (0.7 * required + 0.3 * links))


def overall(dimensions: Mapping[str, int | None]) -> int | None:
    applicable = {k: v for k, v in dimensions.items() if v is not None}
    if not applicable:
        return None
    total = sum(WEIGHTS[k] for k in applicable)
    return round(sum(WEIGHTS[k] * v for k, v in applicable.items()) / total)


def score(inputs: ScoreInputs) -> Scores:
    dims = {
        "syntax": syntax_score(inputs.checks),
        "tests": tests_score(inputs.tests),
        "security": security_score(inputs.checks, inputs.findings),
        "lint": lint_score(inputs.checks, inputs.findings, inputs.lines),
        "docs": docs_score(inputs.docs),
    }
    return Scores(**dims, overall=overall(dims))
