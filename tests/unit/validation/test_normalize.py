"""Tool JSON -> Finding: severities, CWEs, paths, and tolerance of malformed output."""

from __future__ import annotations

import pytest

from qlp.domain.findings import Category, Severity
from qlp.validation.normalize import (
    bandit_findings,
    bandit_severity,
    checkov_findings,
    checkov_reports,
    checkov_severity,
    cwe_of,
    project_path,
    ruff_findings,
    semgrep_findings,
    shellcheck_findings,
)


@pytest.mark.parametrize(
    ("raw", "path"),
    [
        ("/workspace/a/b.py", "a/b.py"),
        ("./a.py", "a.py"),
        ("././a.py", "a.py"),
        ("/main.tf", "main.tf"),
        ("a.py", "a.py"),
        (None, ""),
    ],
)
def test_project_path(raw: object, path: str) -> None:
    assert project_path(raw) == path


@pytest.mark.parametrize(
    ("value", "cwe"),
    [
        ("CWE-89: SQL Injection", "CWE-89"),
        (["CWE-79: XSS", "CWE-80"], "CWE-79"),
        ({"id": 78, "link": "x"}, "CWE-78"),
        (502, "CWE-502"),
        (0, None),
        (True, None),
        ("no weakness", None),
        (None, None),
    ],
)
def test_cwe_of(value: object, cwe: str | None) -> None:
    assert cwe_of(value) == cwe


def test_ruff_security_and_lint_rules() -> None:
    data = [
        {
            "code": "S602",
            "filename": "/workspace/app.py",
            "location": {"row": 4, "column": 12},
            "message": "`subprocess` call with `shell=True` identified",
        },
        {
            "code": "S608",
            "filename": "./db.py",
            "location": {"row": 6, "column": 2},
            "message": "sql",
        },
        {
            "code": "F401",
            "filename": "lint.py",
            "location": {"row": 1, "column": 8},
            "message": "x",
        },
        {
            "code": "E711",
            "filename": "lint.py",
            "location": {"row": 2, "column": 1},
            "message": "y",
        },
        {"code": "S999", "filename": "new.py", "location": {"row": 1, "column": 1}, "message": "z"},
        {"code": None, "filename": "broken.py", "location": {"row": 1}, "message": "SyntaxError"},
        "garbage",
    ]
    found = {f.rule_id: f for f in ruff_findings(data)}
    assert set(found) == {"S602", "S608", "F401", "E711", "S999"}
    assert found["S602"].severity == Severity.HIGH
    assert (found["S602"].cwe, found["S602"].path, found["S602"].line) == ("CWE-78", "app.py", 4)
    assert found["S602"].category == Category.SECURITY
    assert (found["S608"].severity, found["S608"].cwe, found["S608"].path) == (
        Severity.MEDIUM,
        "CWE-89",
        "db.py",
    )
    assert (found["F401"].severity, found["F401"].category) == (Severity.MEDIUM, Category.LINT)
    assert found["E711"].severity == Severity.LOW
    assert found["S999"].severity == Severity.MEDIUM  # an S rule we do not know yet


@pytest.mark.parametrize(
    ("severity", "confidence", "expected"),
    [
        ("HIGH", "HIGH", Severity.HIGH),
        ("HIGH", "MEDIUM", Severity.HIGH),
        ("HIGH", "LOW", Severity.MEDIUM),
        ("MEDIUM", "LOW", Severity.LOW),
        ("LOW", "LOW", Severity.INFO),
        ("UNDEFINED", "HIGH", Severity.LOW),
    ],
)
def test_bandit_severity(severity: str, confidence: str, expected: Severity) -> None:
    assert bandit_severity(severity, confidence) == expected


def test_bandit_findings() -> None:
    data = {
        "errors": [],
        "results": [
            {
                "filename": "./app.py",
                "line_number": 4,
                "col_offset": 11,
                "issue_severity": "HIGH",
                "issue_confidence": "HIGH",
                "issue_cwe": {"id": 78, "link": "https://cwe.mitre.org/data/definitions/78.html"},
                "issue_text": "subprocess call with shell=True identified",
                "test_id": "B602",
            },
            {"filename": "./x.py", "line_number": "bad", "test_id": "B105"},
        ],
    }
    first, second = bandit_findings(data)
    assert (first.rule_id, first.severity, first.cwe, first.path, first.line, first.column) == (
        "B602",
        Severity.HIGH,
        "CWE-78",
        "app.py",
        4,
        12,
    )
    assert second.line is None and second.severity == Severity.LOW
    assert bandit_findings({"results": "nope"}) == []
    assert bandit_findings([]) == []


def test_semgrep_findings() -> None:
    data = {
        "results": [
            {
                "check_id": "tmp.qlp-py-eval-of-data",
                "path": "app.py",
                "start": {"line": 8, "col": 12},
                "extra": {
                    "message": "eval of data ",
                    "severity": "ERROR",
                    "metadata": {"cwe": ["CWE-95: Eval Injection"]},
                },
            },
            {
                "check_id": "warn",
                "path": "/workspace/b.py",
                "start": {"line": 1, "col": 1},
                "extra": {"severity": "WARNING", "metadata": {}},
            },
            {
                "check_id": "crit",
                "path": "c.py",
                "start": {},
                "extra": {"severity": "INFO", "metadata": {"qlp-severity": "critical"}},
            },
        ],
        "errors": [],
    }
    a, b, c = semgrep_findings(data)
    assert (a.rule_id, a.severity, a.cwe, a.line, a.message) == (
        "qlp-py-eval-of-data",
        Severity.HIGH,
        "CWE-95",
        8,
        "eval of data",
    )
    assert (b.severity, b.path, b.cwe) == (Severity.MEDIUM, "b.py", None)
    assert (c.severity, c.line) == (Severity.CRITICAL, None)


def test_checkov_reports_and_severity_table() -> None:
    report = {
        "check_type": "terraform",
        "results": {
            "failed_checks": [
                {
                    "check_id": "CKV_AZURE_59",
                    "check_name": "Ensure that Storage accounts disallow public access",
                    "file_path": "/main.tf",
                    "file_abs_path": "/workspace/infra/main.tf",
                    "file_line_range": [6, 14],
                    "resource": "azurerm_storage_account.public",
                },
                {"check_id": "CKV2_AZURE_1", "file_path": "/main.tf", "file_line_range": [1, 2]},
                {"check_id": "CKV_AZURE_999", "file_path": "/main.tf"},
            ],
            "skipped_checks": [{"check_id": "CKV_DOCKER_1", "file_path": "/Dockerfile"}],
        },
    }
    assert checkov_reports(report) == [report]
    assert checkov_reports([report, "x"]) == [report]
    found = {f.rule_id: f for f in checkov_findings(report)}
    public = found["CKV_AZURE_59"]
    assert (public.severity, public.path, public.line, public.cwe) == (
        Severity.HIGH,
        "infra/main.tf",
        6,
        "CWE-284",
    )
    assert "azurerm_storage_account.public" in public.message
    assert found["CKV2_AZURE_1"].severity == Severity.LOW
    assert found["CKV_AZURE_999"].severity == Severity.MEDIUM
    # a check skipped by an in-code suppression still counts
    assert found["CKV_DOCKER_1"].severity == Severity.HIGH
    assert checkov_severity("CKV_DOCKER_8") == (Severity.MEDIUM, "CWE-250")


def test_shellcheck_levels() -> None:
    data = {
        "comments": [
            {
                "file": "./run.sh",
                "line": 2,
                "column": 6,
                "level": "info",
                "code": 2086,
                "message": "q",
            },
            {
                "file": "./run.sh",
                "line": 3,
                "column": 1,
                "level": "error",
                "code": 1073,
                "message": "e",
            },
            {
                "file": "./run.sh",
                "line": 4,
                "column": 1,
                "level": "warning",
                "code": 2034,
                "message": "w",
            },
        ]
    }
    found = shellcheck_findings(data)
    assert [(f.rule_id, f.severity) for f in found] == [
        ("SC2086", Severity.INFO),
        ("SC1073", Severity.MEDIUM),
        ("SC2034", Severity.LOW),
    ]
    assert all(f.category == Category.LINT and f.path == "run.sh" for f in found)
