"""What the checks found: findings, the outcome of each check, and the scores.

Pure data. The validation room (src/qlp/validation/) produces these; the review gate, the
repair loop, reports and capsules read them.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any


class Severity(enum.StrEnum):
    """Ordered: info < low < medium < high < critical."""

    INFO = "info"
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    CRITICAL = "critical"

    @property
    def rank(self) -> int:
        return _RANK[self]

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, Severity):
            return NotImplemented
        return self.rank < other.rank

    def __le__(self, other: object) -> bool:
        if not isinstance(other, Severity):
            return NotImplemented
        return self.rank <= other.rank

    def __gt__(self, other: object) -> bool:
        if not isinstance(other, Severity):
            return NotImplemented
        return self.rank > other.rank

    def __ge__(self, other: object) -> bool:
        if not isinstance(other, Severity):
            return NotImplemented
        return self.rank >= other.rank

    def lowered(self) -> Severity:
        """One step down (info stays info)."""
        return _BY_RANK[max(0, self.rank - 1)]


_RANK = {s: i for i, s in enumerate(Severity.__members__.values())}
_BY_RANK = dict(enumerate(Severity.__members__.values()))


class Category(enum.StrEnum):
    """Which score dimension a finding counts against."""

    SYNTAX = "syntax"
    SECURITY = "security"
    LINT = "lint"
    DOCS = "docs"


@dataclass(frozen=True)
class Finding:
    """One problem a tool reported, normalised. `path` is relative to the project root,
    `line` and `column` are 1-based (None: the whole file). `cwe` is like "CWE-89"."""

    tool: str
    rule_id: str
    severity: Severity
    path: str
    line: int | None
    message: str
    cwe: str | None = None
    column: int | None = None
    category: Category = Category.SECURITY

    @property
    def sort_key(self) -> tuple[str, int, int, str, str, str]:
        return (
            self.path,
            self.line or 0,
            self.column or 0,
            self.tool,
            self.rule_id,
            self.message,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "tool": self.tool,
            "rule_id": self.rule_id,
            "severity": self.severity.value,
            "category": self.category.value,
            "path": self.path,
            "line": self.line,
            "column": self.column,
            "message": self.message,
            "cwe": self.cwe,
        }


def sort_findings(findings: Iterable[Finding]) -> list[Finding]:
    """Sorted by path, line, column, tool, rule, message; exact duplicates dropped."""
    return sorted(set(findings), key=lambda f: f.sort_key)


class CheckStatus(enum.StrEnum):
    PASSED = "passed"  # ran; found nothing of its kind
    FAILED = "failed"  # ran; reported problems (errors, failing tests or findings)
    NOT_RUN = "not_run"  # its tool is missing: see not_run_reason
    ERROR = "error"  # the tool ran but gave no usable verdict (crash, limit, bad output)
    SKIPPED_NOT_APPLICABLE = "skipped_not_applicable"  # no file it applies to


@dataclass(frozen=True)
class CheckResult:
    name: str  # e.g. "python.ruff"
    tool: str  # e.g. "ruff"
    status: CheckStatus
    files: tuple[str, ...] = ()
    duration_s: float = 0.0
    detail: str = ""
    findings: tuple[Finding, ...] = ()
    not_run_reason: str | None = None

    @property
    def ran(self) -> bool:
        return self.status in (CheckStatus.PASSED, CheckStatus.FAILED)

    def to_dict(self, *, timings: bool = True) -> dict[str, Any]:
        data: dict[str, Any] = {
            "name": self.name,
            "tool": self.tool,
            "status": self.status.value,
            "files": list(self.files),
            "detail": self.detail,
            "findings": len(self.findings),
            "not_run_reason": self.not_run_reason,
        }
        if timings:
            data["duration_s"] = round(self.duration_s, 3)
        return data


DIMENSIONS = ("syntax", "tests", "security", "lint", "docs")


@dataclass(frozen=True)
class Scores:
    """0-100 per dimension; None means "n/a": nothing of that dimension applied or ran.
    `overall` is the weighted mean over the applicable dimensions only (docs/VALIDATION.md)."""

    syntax: int | None = None
    tests: int | None = None
    security: int | None = None
    lint: int | None = None
    docs: int | None = None
    overall: int | None = None

    def dimensions(self) -> dict[str, int | None]:
        return {name: getattr(self, name) for name in DIMENSIONS}

    def to_dict(self) -> dict[str, int | None]:
        """Name -> 0-100, or None (JSON null) for n/a: the one form every reader gets (the
        capsule manifest's schema, API answers, `--json` output, stored review rounds).
        Showing "n/a" is for whoever renders it for a person."""
        return {**self.dimensions(), "overall": self.overall}


def score_values(raw: Mapping[str, Any]) -> dict[str, int | None]:
    """Scores as stored or received, with anything that is not a number made None: review
    rounds written before to_dict used null hold the string "n/a"."""
    return {
        str(k): v if isinstance(v, int) and not isinstance(v, bool) else None
        for k, v in raw.items()
    }
