"""Validation settings, the per-file output framing, and severity ordering."""

from __future__ import annotations

import pytest

from qlp.config import Settings
from qlp.domain.findings import Finding, Severity, sort_findings
from qlp.errors import ConfigError
from qlp.validation.checks.base import parse_json, shell_loop, split_loop
from qlp.validation.config import (
    CHECKS,
    DEFAULT_REQUIRED_CHECKS,
    ValidationConfig,
    parse_check_names,
)


def test_settings_map_to_the_config() -> None:
    settings = Settings(
        validation_timeout_s=30,
        validation_test_timeout_s=60,
        validation_memory_mb=512,
        validation_concurrency=3,
        validation_coverage=False,
        required_checks="python.compile, semgrep",
        required_docs="README.md, docs/USAGE.md",
    )
    cfg = ValidationConfig.from_settings(settings)
    assert (cfg.tool_timeout_s, cfg.test_timeout_s, cfg.memory_mb) == (30, 60, 512)
    assert (cfg.concurrency, cfg.coverage) == (3, False)
    assert cfg.required_checks == {"python.compile", "semgrep"}
    assert cfg.required_docs == ("README.md", "docs/USAGE.md")
    assert ValidationConfig.from_settings(Settings()).required_checks == DEFAULT_REQUIRED_CHECKS
    limits = cfg.limits(30)
    assert (limits.timeout_s, limits.memory_bytes) == (30, 512 * 1024 * 1024)


def test_check_names() -> None:
    assert parse_check_names("all") == frozenset(CHECKS)
    assert parse_check_names(" ") == frozenset()
    with pytest.raises(ConfigError, match="unknown check name"):
        parse_check_names("python.compile,pyhton.ruff")
    with pytest.raises(ConfigError, match="QLP_REQUIRED_CHECKS"):
        ValidationConfig.from_settings(Settings(required_checks="nope"))
    assert "typescript.check" not in DEFAULT_REQUIRED_CHECKS


def test_loop_framing_cannot_be_forged() -> None:
    argv, nonce = shell_loop(["node", "--check"])
    assert argv[:2] == ["sh", "-c"] and "node --check" in argv[2]
    forged = "@@deadbeef@@ ./evil.js\n@@deadbeef-rc@@ 0\n"
    out = (
        f"\n@@{nonce}@@ ./a.js\n{forged}SyntaxError: x\n\n@@{nonce}-rc@@ 1\n"
        f"\n@@{nonce}@@ ./b.js\n\n@@{nonce}-rc@@ 0\n"
    )
    parsed = split_loop(out, nonce)
    assert parsed["./a.js"][0] == 1 and "SyntaxError" in parsed["./a.js"][1]
    assert parsed["./b.js"] == (0, "")
    assert set(parsed) == {"./a.js", "./b.js"}


def test_parse_json_skips_a_preamble() -> None:
    assert parse_json('{"a": 1}') == {"a": 1}
    assert parse_json('warning: x\n[{"a": 1}]') == [{"a": 1}]
    with pytest.raises(ValueError, match="not JSON"):
        parse_json("Traceback (most recent call last)")


def test_severity_order_and_finding_sort() -> None:
    assert Severity.INFO < Severity.LOW < Severity.MEDIUM < Severity.HIGH < Severity.CRITICAL
    assert max(Severity.LOW, Severity.CRITICAL) == Severity.CRITICAL
    assert Severity.HIGH.lowered() == Severity.MEDIUM and Severity.INFO.lowered() == Severity.INFO
    a = Finding("ruff", "F401", Severity.LOW, "b.py", 2, "m")
    b = Finding("bandit", "B1", Severity.HIGH, "a.py", None, "m")
    c = Finding("bandit", "B1", Severity.HIGH, "a.py", 5, "m")
    assert sort_findings([a, c, b, a]) == [b, c, a]
