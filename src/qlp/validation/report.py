"""The outcome of one validation run, and what the gate, the repair loop and reports read."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from typing import Any

from qlp.domain.findings import (
    Category,
    CheckResult,
    CheckStatus,
    Finding,
    Scores,
    Severity,
)
from qlp.validation.junit import EMPTY_JUNIT, TestFailure, TestsSummary
from qlp.validation.sarif import to_sarif

SCHEMA_VERSION = 1
TEST_CHECKS = ("python.pytest", "javascript.test")

# Noise that changes between two runs of the same failure: temp paths, addresses, timings.
_NOISE = (
    (re.compile(r"/tmp/[^\s:'\"]*"), "/tmp/…"),  # noqa: S108 - a pattern, not a path
    (re.compile(r"0x[0-9a-fA-F]{6,}"), "0x…"),
    (re.compile(r"\b\d+(\.\d+)?\s?(s|ms|sec|seconds)\b"), "…s"),
    (re.compile(r"\s+"), " "),
)


def normalise_message(text: str) -> str:
    for pattern, repl in _NOISE:
        text = pattern.sub(repl, text)
    return text.strip()[:300]


@dataclass(frozen=True)
class ValidationReport:
    checks: list[CheckResult]
    findings: list[Finding]  # sorted (Finding.sort_key)
    scores: Scores
    tests: TestsSummary
    syntax_ok: bool
    tests_ok: bool | None  # None: no test ran
    not_run: list[str]  # checks whose tool is missing (status not_run)
    errors: list[str] = field(default_factory=list)  # checks that ran but gave no verdict
    scope: tuple[str, ...] | None = None  # only_files, when given
    files_dropped: int = 0  # files beyond max_files, not checked
    duration_s: float = 0.0
    sandbox_time_s: float = 0.0  # sum of the sandboxed commands' wall times
    sandbox_commands: int = 0  # how many sandboxed commands the run took

    # -- what the gate reads -------------------------------------------------------------
    @property
    def high_findings(self) -> list[Finding]:
        """Security findings of high or critical severity (syntax errors are syntax_ok's)."""
        return [
            f
            for f in self.findings
            if f.category == Category.SECURITY and f.severity >= Severity.HIGH
        ]

    def blocking(self, required: Collection[str]) -> list[str]:
        """Required checks that gave no verdict: their tool is missing, or it failed to run."""
        return sorted(n for n in (*self.not_run, *self.errors) if n in required)

    def check(self, name: str) -> CheckResult | None:
        return next((c for c in self.checks if c.name == name), None)

    # -- exports -------------------------------------------------------------------------
    def to_dict(self, *, timings: bool = False) -> dict[str, Any]:
        """Stable JSON (reports/validation.json): without timings, the same results give the
        same document."""
        data: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION,
            "scope": list(self.scope) if self.scope is not None else None,
            "syntax_ok": self.syntax_ok,
            "tests_ok": self.tests_ok,
            "scores": self.scores.to_dict(),
            "not_run": list(self.not_run),
            "errors": list(self.errors),
            "files_dropped": self.files_dropped,
            "checks": [c.to_dict(timings=timings) for c in self.checks],
            "findings": [f.to_dict() for f in self.findings],
            "tests": self.tests.to_dict(),
            "failure_digest": self.failure_digest(),
        }
        if timings:
            data["duration_s"] = round(self.duration_s, 3)
            data["sandbox_time_s"] = round(self.sandbox_time_s, 3)
            data["sandbox_commands"] = self.sandbox_commands
        return data

    def sarif(self) -> dict[str, Any]:
        return to_sarif(self.checks, self.findings)

    def junit_xml(self) -> str:
        return self.tests.junit_xml if self.tests.ran else EMPTY_JUNIT

    # -- what the repair loop reads ------------------------------------------------------
    def failures(self) -> list[Finding | TestFailure | CheckResult]:
        """What must change before the gate can pass: syntax errors, failing tests, security
        findings of high or critical severity, and checks that errored."""
        items: list[Finding | TestFailure | CheckResult] = []
        items += [f for f in self.findings if f.category == Category.SYNTAX]
        items += list(self.tests.failures)
        items += self.high_findings
        items += [c for c in self.checks if c.status == CheckStatus.ERROR]
        return items

    def failure_digest(self) -> str:
        """sha256 over the failures, ignoring line numbers, timings, temp paths and order:
        the same failures give the same digest from one repair attempt to the next."""
        keys: set[str] = set()
        for item in self.failures():
            if isinstance(item, Finding):
                key = ["finding", item.tool, item.rule_id, item.path, item.cwe or ""]
                key.append(normalise_message(item.message))
            elif isinstance(item, TestFailure):
                key = ["test", item.test_id, item.kind, normalise_message(item.message)]
            else:
                key = ["check", item.name, item.status.value]
            keys.add(json.dumps(key, ensure_ascii=False))
        body = "\n".join(sorted(keys))
        return hashlib.sha256(body.encode()).hexdigest()

    def repair_brief(self, task_files: Collection[str], max_chars: int = 6000) -> str:
        """The failures as text for the agent, most important first: syntax errors, failing
        tests, high/critical security findings, other security findings, lint, docs; within
        each, problems in the task's own files first. Cut at max_chars."""
        own = {f.removeprefix("./") for f in task_files}

        def mine_first(findings: Iterable[Finding]) -> list[Finding]:
            return sorted(
                findings, key=lambda f: (f.path not in own, -f.severity.rank, *f.sort_key)
            )

        def line_of(f: Finding) -> str:
            where = f"{f.path}:{f.line}" if f.line else f.path
            cwe = f" [{f.cwe}]" if f.cwe else ""
            return f"- {where}: {f.message} ({f.tool} {f.rule_id}, {f.severity.value}{cwe})"

        sections: list[tuple[str, list[str]]] = []
        syntax = [f for f in self.findings if f.category == Category.SYNTAX]
        sections.append(("Syntax errors", [line_of(f) for f in mine_first(syntax)]))
        tests = sorted(self.tests.failures, key=lambda t: (t.path not in own, t.test_id))
        sections.append(("Failing tests", [_test_text(t) for t in tests]))
        security = [f for f in self.findings if f.category == Category.SECURITY]
        high = [f for f in security if f.severity >= Severity.HIGH]
        rest = [f for f in security if f.severity < Severity.HIGH and f.severity > Severity.INFO]
        sections.append(
            ("Security findings (high or critical)", [line_of(f) for f in mine_first(high)])
        )
        sections.append(("Other security findings", [line_of(f) for f in mine_first(rest)]))
        errored = [c for c in self.checks if c.status == CheckStatus.ERROR]
        sections.append(("Checks that could not run", [f"- {c.name}: {c.detail}" for c in errored]))
        lint = [
            f for f in self.findings if f.category == Category.LINT and f.severity > Severity.INFO
        ]
        sections.append(("Lint", [line_of(f) for f in mine_first(lint)]))
        docs = [f for f in self.findings if f.category == Category.DOCS]
        sections.append(("Documentation", [line_of(f) for f in mine_first(docs)]))
        return _assemble(sections, max_chars)


def _test_text(t: TestFailure) -> str:
    head = f"- {t.test_id} ({t.kind}): {t.message}".rstrip(": ")
    detail = t.text.strip()
    if detail:
        lines = detail.splitlines()
        # the end of a traceback holds the assertion; keep it
        detail = "\n".join("    " + line for line in lines[-12:])
        return f"{head}\n{detail}"
    return head


def _assemble(sections: list[tuple[str, list[str]]], max_chars: int) -> str:
    total = sum(len(items) for _, items in sections)
    trailer_room = 48  # "... and N more problem(s) not shown"
    budget = max(0, max_chars - trailer_room)
    out: list[str] = []
    used = shown = 0
    for title, items in sections:
        if not items:
            continue
        header = f"## {title} ({len(items)})"
        for index, item in enumerate(items):
            needed = len(item) + 1 + (len(header) + 1 if index == 0 else 0)
            if used + needed > budget:
                break
            if index == 0:
                out.append(header)
            out.append(item)
            used += needed
            shown += 1
    if shown < total:
        out.append(f"... and {total - shown} more problem(s) not shown")
    text = "\n".join(out)
    return text if len(text) <= max_chars else text[: max(0, max_chars - 3)] + "..."
