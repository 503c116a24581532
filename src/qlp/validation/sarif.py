"""Findings -> SARIF 2.1.0: one run per tool that ran, its rules in tool.driver.rules, CWE
as a taxonomy (run.taxonomies + result.taxa) and in each result's properties."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from qlp.domain.findings import CheckResult, Finding, Severity

SARIF_VERSION = "2.1.0"
SARIF_SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"
SRCROOT = "%SRCROOT%"

TOOL_URIS = {
    "ruff": "https://docs.astral.sh/ruff/",
    "bandit": "https://bandit.readthedocs.io/",
    "semgrep": "https://semgrep.dev/",
    "checkov": "https://www.checkov.io/",
    "shellcheck": "https://www.shellcheck.net/",
    "node": "https://nodejs.org/",
    "tsc": "https://www.typescriptlang.org/",
}
# SARIF levels: error, warning, note. security-severity follows the CVSS-like bands that code
# scanning front ends use to label results (critical >= 9, high >= 7, medium >= 4).
LEVEL = {
    Severity.CRITICAL: "error",
    Severity.HIGH: "error",
    Severity.MEDIUM: "warning",
    Severity.LOW: "note",
    Severity.INFO: "note",
}
SECURITY_SEVERITY = {
    Severity.CRITICAL: "9.5",
    Severity.HIGH: "8.0",
    Severity.MEDIUM: "5.5",
    Severity.LOW: "3.0",
    Severity.INFO: "0.0",
}


def _cwe_number(cwe: str | None) -> str | None:
    return cwe.split("-", 1)[1] if cwe and cwe.upper().startswith("CWE-") else None


def _result(f: Finding, rule_index: int) -> dict[str, Any]:
    region: dict[str, Any] = {}
    if f.line:
        region["startLine"] = f.line
        if f.column:
            region["startColumn"] = f.column
    location: dict[str, Any] = {"artifactLocation": {"uri": f.path, "uriBaseId": SRCROOT}}
    if region:
        location["region"] = region
    props: dict[str, Any] = {"severity": f.severity.value, "category": f.category.value}
    result: dict[str, Any] = {
        "ruleId": f.rule_id,
        "ruleIndex": rule_index,
        "level": LEVEL[f.severity],
        "message": {"text": f.message or f.rule_id},
        "locations": [{"physicalLocation": location}],
        "properties": props,
    }
    number = _cwe_number(f.cwe)
    if number:
        props["cwe"] = f.cwe
        result["taxa"] = [{"id": number, "toolComponent": {"name": "CWE"}}]
    return result


def _rule(f: Finding) -> dict[str, Any]:
    tags = [f.category.value]
    number = _cwe_number(f.cwe)
    if number:
        tags.append(f"external/cwe/cwe-{number}")
    props: dict[str, Any] = {"tags": tags}
    if f.category.value == "security":
        props["security-severity"] = SECURITY_SEVERITY[f.severity]
    rule: dict[str, Any] = {
        "id": f.rule_id,
        "shortDescription": {"text": f.message.splitlines()[0][:200] if f.message else f.rule_id},
        "defaultConfiguration": {"level": LEVEL[f.severity]},
        "properties": props,
    }
    if number:
        rule["relationships"] = [
            {
                "target": {"id": number, "toolComponent": {"name": "CWE"}},
                "kinds": ["relevant"],
            }
        ]
    return rule


def to_sarif(checks: Sequence[CheckResult], findings: Sequence[Finding]) -> dict[str, Any]:
    tools: dict[str, bool] = {}
    for check in checks:
        if check.ran or check.findings:
            tools[check.tool] = tools.get(check.tool, True) and check.ran
    for f in findings:
        tools.setdefault(f.tool, True)
    runs: list[dict[str, Any]] = []
    for tool in sorted(tools):
        mine = [f for f in findings if f.tool == tool]
        rules: list[dict[str, Any]] = []
        index: dict[str, int] = {}
        results = []
        for f in mine:
            if f.rule_id not in index:
                index[f.rule_id] = len(rules)
                rules.append(_rule(f))
            results.append(_result(f, index[f.rule_id]))
        driver: dict[str, Any] = {"name": tool, "rules": rules}
        if tool in TOOL_URIS:
            driver["informationUri"] = TOOL_URIS[tool]
        cwes = sorted({n for f in mine if (n := _cwe_number(f.cwe))}, key=int)
        run: dict[str, Any] = {
            "tool": {"driver": driver},
            "originalUriBaseIds": {SRCROOT: {"uri": "file:///workspace/"}},
            "invocations": [{"executionSuccessful": tools[tool]}],
            "results": results,
        }
        if cwes:
            driver["supportedTaxonomies"] = [{"name": "CWE"}]
            run["taxonomies"] = [
                {
                    "name": "CWE",
                    "organization": "MITRE",
                    "informationUri": "https://cwe.mitre.org/",
                    "taxa": [{"id": n, "name": f"CWE-{n}"} for n in cwes],
                }
            ]
        runs.append(run)
    return {"$schema": SARIF_SCHEMA, "version": SARIF_VERSION, "runs": runs}
