"""Read the corpus labels and compare a validation report with them.

Used by tests/integration/test_validation_corpus.py (every label must hold) and by
bench/validation_gate.py (precision and recall of the security gate).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qlp.domain.findings import Category, Finding, Severity

CORPUS = Path(__file__).resolve().parent
MANIFEST = CORPUS / "manifest.json"
NOT_CORPUS = {"manifest.json", "labels.py", "__init__.py"}


@dataclass(frozen=True)
class Expectation:
    path: str
    min_severity: Severity
    tool: str | None = None
    rule: str | None = None
    cwe: str | None = None
    line: int | None = None

    def matches(self, f: Finding) -> bool:
        return (
            f.path == self.path
            and f.severity >= self.min_severity
            and (self.tool is None or f.tool == self.tool)
            and (self.rule is None or f.rule_id == self.rule)
            and (self.cwe is None or f.cwe == self.cwe)
            and (self.line is None or f.line == self.line)
        )

    def __str__(self) -> str:
        parts = [f"{self.path}:{self.line or '*'}", f">={self.min_severity.value}"]
        parts += [p for p in (self.tool, self.rule, self.cwe) if p]
        return " ".join(parts)


@dataclass(frozen=True)
class Label:
    path: str
    blocks: bool
    expect: tuple[Expectation, ...]


def load_labels() -> list[Label]:
    data: dict[str, Any] = json.loads(MANIFEST.read_text())
    labels = []
    for path, entry in data["files"].items():
        expect = tuple(
            Expectation(
                path=path,
                min_severity=Severity(e["min_severity"]),
                tool=e.get("tool"),
                rule=e.get("rule"),
                cwe=e.get("cwe"),
                line=e.get("line"),
            )
            for e in entry["expect"]
        )
        labels.append(Label(path=path, blocks=bool(entry["blocks"]), expect=expect))
    return labels


def corpus_files() -> list[str]:
    return sorted(
        p.relative_to(CORPUS).as_posix()
        for p in CORPUS.rglob("*")
        if p.is_file() and p.name not in NOT_CORPUS and "__pycache__" not in p.parts
    )


def copy_corpus(dest: Path) -> None:
    """Only the labelled files, so nothing but the corpus is scanned."""
    for label in load_labels():
        target = dest / label.path
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(CORPUS / label.path, target)


def blocking(findings: list[Finding], path: str) -> list[Finding]:
    """Findings on `path` that block the security gate (high or critical security)."""
    return [
        f
        for f in findings
        if f.path == path and f.category == Category.SECURITY and f.severity >= Severity.HIGH
    ]


@dataclass(frozen=True)
class GateMetrics:
    true_positive: int
    false_positive: int
    false_negative: int
    true_negative: int
    expectations: int
    expectations_met: int

    @property
    def precision(self) -> float:
        flagged = self.true_positive + self.false_positive
        return self.true_positive / flagged if flagged else 1.0

    @property
    def recall(self) -> float:
        actual = self.true_positive + self.false_negative
        return self.true_positive / actual if actual else 1.0


def gate_metrics(findings: list[Finding]) -> GateMetrics:
    tp = fp = fn = tn = met = total = 0
    for label in load_labels():
        flagged = bool(blocking(findings, label.path))
        if label.blocks and flagged:
            tp += 1
        elif label.blocks:
            fn += 1
        elif flagged:
            fp += 1
        else:
            tn += 1
        for e in label.expect:
            total += 1
            met += any(e.matches(f) for f in findings)
    return GateMetrics(tp, fp, fn, tn, total, met)
