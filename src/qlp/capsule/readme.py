"""README.md of a capsule, generated from its manifest alone (so it is as deterministic)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from qlp.capsule.format import PROJECT_PREFIX, README

# (file in project/, commands that run it): the first few that apply are shown.
_RUN_HINTS: tuple[tuple[str, str], ...] = (
    ("requirements.txt", "python -m venv .venv && .venv/bin/pip install -r requirements.txt"),
    ("pyproject.toml", "python -m venv .venv && .venv/bin/pip install -e ."),
    ("package.json", "npm install && npm test"),
    ("Makefile", "make"),
    ("Dockerfile", "docker build -t app ."),
    ("docker-compose.yml", "docker compose up"),
)


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _cost(totals: Mapping[str, Any]) -> str:
    cost = totals.get("cost_usd")
    unpriced = int(totals.get("unpriced_calls") or 0)
    if cost is None:
        return "unknown (no model price known)"
    text = f"${float(cost):.4f}"
    return f"at least {text} ({unpriced} call(s) without a known price)" if unpriced else text


def render_readme(manifest: Mapping[str, Any]) -> str:
    intent = manifest["intent"]
    totals = manifest["totals"]
    entries = [e["path"] for e in manifest["entries"] if e["path"] != README]
    project = sorted(p[len(PROJECT_PREFIX) :] for p in entries if p.startswith(PROJECT_PREFIX))
    lines = [
        f"# QuantumCapsule {manifest['capsule_id']}",
        "",
        "A signed, reproducible archive of a project that QLP generated from an intent,",
        "tested, scanned, scored and reviewed. `manifest.json` lists every entry with its",
        "sha256; `manifest.sig` is an ed25519 signature over the exact bytes of",
        "`manifest.json`.",
        "",
        "## Intent",
        "",
        f"- id: `{intent['id']}`",
        f"- version: {manifest['version']}"
        + (f" (new version of `{manifest['parent']}`)" if manifest.get("parent") else ""),
        "",
    ]
    lines += ["> " + line if line else ">" for line in str(intent["text"]).splitlines()]
    lines += [
        "",
        "## How to run it",
        "",
        "```sh",
        f"qlp capsule verify {manifest['capsule_id']}.qlcapsule"
        f" --key {manifest['signing']['public_key']}",
        f"qlp capsule extract {manifest['capsule_id']}.qlcapsule ./capsule",
        "cd capsule/project",
    ]
    hints = [cmd for name, cmd in _RUN_HINTS if name in project]
    lines += hints[:3] or ["# see the files below; no build file was recognised"]
    lines += ["```", ""]
    lines += [f"The project has {len(project)} file(s) under `project/`.", ""]

    lines += ["## Scores", ""]
    scores = manifest.get("scores") or {}
    if scores:
        lines += ["| score | value |", "|---|---|"]
        for name in sorted(scores):
            value = scores[name]
            lines.append(f"| {_cell(name)} | {'n/a' if value is None else value} |")
    else:
        lines.append("No scores were recorded.")
    lines.append("")

    lines += ["## Gates", ""]
    gates = manifest.get("gates") or []
    if gates:
        lines += ["| gate | result | detail |", "|---|---|---|"]
        for gate in gates:
            passed = gate["passed"]
            result = "n/a" if passed is None else ("passed" if passed else "FAILED")
            lines.append(f"| {_cell(gate['name'])} | {result} | {_cell(gate['detail'])} |")
    else:
        lines.append("No gates were evaluated.")
    lines.append("")

    lines += ["## Decision", ""]
    decision = manifest.get("decision")
    if decision:
        lines.append(f"**{decision['decision']}** by {decision['by']} at {decision['at']}")
        if decision.get("reason"):
            lines += ["", f"Reason: {decision['reason']}"]
    else:
        lines.append("No review decision was recorded.")
    lines.append("")

    models = ", ".join(f"{m['provider']}:{m['model']}" for m in manifest.get("models") or [])
    lines += [
        "## Cost",
        "",
        f"- models: {models or 'none'}",
        f"- tokens: {totals['input_tokens']} in, {totals['output_tokens']} out",
        f"- cost: {_cost(totals)}",
        "",
        "## Contents",
        "",
        "- `project/`: the generated project",
        "- `tasks/<task-id>.json`: each task of the plan and its outcome",
        "- `reports/validation.json`, `reports/security.sarif` (SARIF),"
        " `reports/tests.xml` (JUnit)",
        "- `transcript.jsonl`: every model call, one JSON object a line",
        "- `sbom.cdx.json`: CycloneDX SBOM of the dependencies the project declares",
        "",
    ]
    notes = manifest.get("notes")
    if notes:
        lines += ["## Notes", "", str(notes).rstrip(), ""]
    return "\n".join(lines)
