"""Precision and recall of the security gate on the labelled corpus (tests/corpus/).

    .venv/bin/python bench/validation_gate.py

A file is "flagged" when it gets a security finding of high or critical severity (what blocks
the gate); the truth is the manifest's `blocks` label. QLP's gate (all tools, QLP's severity
mappings) is compared, in the same run, with each tool alone as the baseline: bandit, ruff
(flake8-bandit rules), semgrep (QLP's rules) and checkov. Writes bench/results/validation_gate.json.
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

from _common import ROOT  # noqa: F401 - puts the repository root on sys.path
from tests.corpus.labels import copy_corpus, gate_metrics, load_labels

from qlp.config import Settings
from qlp.domain.findings import Finding
from qlp.engine.wiring import make_sandbox
from qlp.validation import ValidationConfig, validate


def row(name: str, findings: list[Finding]) -> dict[str, object]:
    m = gate_metrics(findings)
    return {
        "gate": name,
        "precision": round(m.precision, 3),
        "recall": round(m.recall, 3),
        "tp": m.true_positive,
        "fp": m.false_positive,
        "fn": m.false_negative,
        "tn": m.true_negative,
        "expected_findings_met": f"{m.expectations_met}/{m.expectations}",
    }


async def main() -> int:
    labels = load_labels()
    with tempfile.TemporaryDirectory(prefix="qlp-bench-") as tmp:
        workspace = Path(tmp) / "corpus"
        copy_corpus(workspace)
        sandbox = make_sandbox(Settings(home=Path(tmp) / "home"))
        sandbox.check()
        started = time.perf_counter()
        async with sandbox.session(workspace) as session:
            report = await validate(session, workspace, config=ValidationConfig())
        wall = time.perf_counter() - started
    rows = [row("qlp (all tools)", report.findings)]
    for tool in ("bandit", "ruff", "semgrep", "checkov"):
        rows.append(row(f"{tool} alone", [f for f in report.findings if f.tool == tool]))
    result = {
        "corpus_files": len(labels),
        "should_block": sum(1 for label in labels if label.blocks),
        "validate_wall_s": round(wall, 2),
        "not_run": report.not_run,
        "errors": report.errors,
        "rows": rows,
    }
    print(f"corpus: {len(labels)} files, {result['should_block']} must block; wall {wall:.2f} s")
    print(f"{'gate':18} {'precision':>9} {'recall':>7}  tp fp fn tn  expected findings")
    for r in rows:
        print(
            f"{r['gate']:18} {r['precision']:>9} {r['recall']:>7}  "
            f"{r['tp']:>2} {r['fp']:>2} {r['fn']:>2} {r['tn']:>2}  {r['expected_findings_met']}"
        )
    out = Path(__file__).resolve().parent / "results" / "validation_gate.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    return 0 if not report.not_run and not report.errors else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
