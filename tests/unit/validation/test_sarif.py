"""SARIF 2.1.0: the fields the specification requires, and CWE as a taxonomy."""

from __future__ import annotations

import json
from typing import Any

from qlp.domain.findings import Category, CheckResult, CheckStatus, Finding, Severity
from qlp.validation.sarif import to_sarif

LEVELS = {"none", "note", "warning", "error"}


def assert_valid_sarif(doc: dict[str, Any]) -> None:
    """The required shape of a SARIF 2.1.0 log (sarifLog, run, tool, result, location)."""
    assert doc["version"] == "2.1.0"
    assert doc["$schema"].endswith("sarif-2.1.0.json")
    assert isinstance(doc["runs"], list)
    for run in doc["runs"]:
        driver = run["tool"]["driver"]
        assert isinstance(driver["name"], str) and driver["name"]
        rule_ids = [r["id"] for r in driver.get("rules", [])]
        assert len(rule_ids) == len(set(rule_ids))
        taxa = {t["id"] for tax in run.get("taxonomies", []) for t in tax["taxa"]}
        for result in run["results"]:
            assert isinstance(result["message"]["text"], str) and result["message"]["text"]
            assert result["level"] in LEVELS
            assert rule_ids[result["ruleIndex"]] == result["ruleId"]
            for loc in result["locations"]:
                phys = loc["physicalLocation"]
                assert not phys["artifactLocation"]["uri"].startswith("/")
                region = phys.get("region", {})
                assert region.get("startLine", 1) >= 1 and region.get("startColumn", 1) >= 1
            for ref in result.get("taxa", []):
                assert ref["toolComponent"]["name"] == "CWE" and ref["id"] in taxa
    json.dumps(doc)


def test_sarif_export() -> None:
    findings = [
        Finding("semgrep", "qlp-py-eval", Severity.HIGH, "a.py", 3, "eval", "CWE-95", 5),
        Finding("semgrep", "qlp-py-eval", Severity.HIGH, "b.py", 1, "eval", "CWE-95"),
        Finding("bandit", "B602", Severity.CRITICAL, "a.py", 4, "shell", "CWE-78"),
        Finding("ruff", "F401", Severity.MEDIUM, "c.py", None, "unused", category=Category.LINT),
    ]
    checks = [
        CheckResult(
            "semgrep", "semgrep", CheckStatus.FAILED, ("a.py",), findings=tuple(findings[:2])
        ),
        CheckResult("python.bandit", "bandit", CheckStatus.FAILED, findings=(findings[2],)),
        CheckResult("python.ruff", "ruff", CheckStatus.FAILED, findings=(findings[3],)),
        CheckResult("shell.shellcheck", "shellcheck", CheckStatus.PASSED),
        CheckResult("terraform.checkov", "checkov", CheckStatus.NOT_RUN),
    ]
    doc = to_sarif(checks, findings)
    assert_valid_sarif(doc)
    runs = {r["tool"]["driver"]["name"]: r for r in doc["runs"]}
    assert set(runs) == {"semgrep", "bandit", "ruff", "shellcheck"}  # tools that ran
    semgrep = runs["semgrep"]
    assert len(semgrep["tool"]["driver"]["rules"]) == 1 and len(semgrep["results"]) == 2
    first = semgrep["results"][0]
    assert first["level"] == "error"
    assert first["locations"][0]["physicalLocation"]["region"] == {"startLine": 3, "startColumn": 5}
    assert first["properties"]["cwe"] == "CWE-95"
    assert first["taxa"] == [{"id": "95", "toolComponent": {"name": "CWE"}}]
    rule = semgrep["tool"]["driver"]["rules"][0]
    assert "external/cwe/cwe-95" in rule["properties"]["tags"]
    assert rule["properties"]["security-severity"] == "8.0"
    ruff = runs["ruff"]["results"][0]
    assert ruff["level"] == "warning" and "region" not in ruff["locations"][0]["physicalLocation"]
    assert runs["shellcheck"]["results"] == []


def test_empty_report_is_valid() -> None:
    doc = to_sarif([], [])
    assert_valid_sarif(doc)
    assert doc["runs"] == []
