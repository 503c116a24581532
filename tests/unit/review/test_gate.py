from __future__ import annotations

import pytest

from qlp.review.gate import GateInput, Policy, Verdict, evaluate, may_approve

GOOD = GateInput(
    syntax_ok=True, tests_ok=True, high_findings=0, overall_score=92, not_run_required=()
)


def test_all_gates_pass_auto_approves() -> None:
    out = evaluate(GOOD, policy=Policy.AUTO, threshold=80)
    assert out.all_passed
    assert out.verdict == Verdict.APPROVE


@pytest.mark.parametrize(
    ("change", "gate"),
    [
        ({"syntax_ok": False}, "syntax"),
        ({"tests_ok": False}, "tests"),
        ({"tests_ok": None}, "tests"),
        ({"high_findings": 2}, "security"),
        ({"overall_score": 79}, "score"),
        ({"overall_score": None}, "score"),
        ({"not_run_required": ("semgrep",)}, "required checks"),
    ],
)
def test_each_failing_gate_sends_to_review(change: dict[str, object], gate: str) -> None:
    data = GateInput(**{**GOOD.__dict__, **change})  # type: ignore[arg-type]
    out = evaluate(data, policy=Policy.AUTO, threshold=80)
    assert [g.name for g in out.failed] == [gate]
    assert out.verdict == Verdict.REVIEW


def test_policies() -> None:
    assert evaluate(GOOD, policy=Policy.ALWAYS, threshold=80).verdict == Verdict.REVIEW
    assert evaluate(GOOD, policy=Policy.NEVER_AUTO, threshold=80).verdict == Verdict.REVIEW
    bad = evaluate(
        GateInput(**{**GOOD.__dict__, "high_findings": 1}), policy=Policy.ALWAYS, threshold=80
    )
    assert may_approve(bad.gates, Policy.ALWAYS) is None
    reason = may_approve(bad.gates, Policy.NEVER_AUTO)
    assert reason is not None
    assert "security" in reason
