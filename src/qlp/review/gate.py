"""The review gate: scores and checks in, a verdict out (approve, wait for a person, ...).

Policies (QLP_REVIEW_POLICY):
- auto:       every gate passes -> approved automatically; otherwise a person decides.
- always:     a person decides every intent; they may approve over a failing gate (the
              override is recorded with their reason).
- never_auto: a person decides every intent, and cannot approve while a gate fails: the
              choices are then request changes or reject.
"""

from __future__ import annotations

import enum
from collections.abc import Collection
from dataclasses import dataclass


class Policy(enum.StrEnum):
    AUTO = "auto"
    ALWAYS = "always"
    NEVER_AUTO = "never_auto"


class Verdict(enum.StrEnum):
    APPROVE = "approve"  # approved automatically
    REVIEW = "review"  # wait for a person


@dataclass(frozen=True)
class GateInput:
    """What the gate looks at, taken from a validation report."""

    syntax_ok: bool
    tests_ok: bool | None  # None: the project has no tests
    high_findings: int  # findings of high or critical severity
    overall_score: int | None  # None: nothing applicable was scored
    not_run_required: tuple[str, ...]  # required checks that could not run


@dataclass(frozen=True)
class Gate:
    name: str
    passed: bool
    detail: str

    def as_dict(self) -> dict[str, object]:
        return {"name": self.name, "passed": self.passed, "detail": self.detail}


@dataclass(frozen=True)
class GateOutcome:
    gates: tuple[Gate, ...]
    verdict: Verdict

    @property
    def all_passed(self) -> bool:
        return all(g.passed for g in self.gates)

    @property
    def failed(self) -> list[Gate]:
        return [g for g in self.gates if not g.passed]


def evaluate(data: GateInput, *, policy: Policy, threshold: int) -> GateOutcome:
    tests_detail = (
        "no tests in the project"
        if data.tests_ok is None
        else ("all tests pass" if data.tests_ok else "some tests fail")
    )
    score = data.overall_score
    gates = (
        Gate("syntax", data.syntax_ok, "clean" if data.syntax_ok else "syntax errors remain"),
        # A project without tests has nothing proving it works: the gate does not pass.
        Gate("tests", data.tests_ok is True, tests_detail),
        Gate(
            "security",
            data.high_findings == 0,
            "no high or critical finding"
            if data.high_findings == 0
            else f"{data.high_findings} finding(s) of high or critical severity",
        ),
        Gate(
            "score",
            score is not None and score >= threshold,
            f"overall {score if score is not None else 'n/a'} (threshold {threshold})",
        ),
        Gate(
            "required checks",
            not data.not_run_required,
            "all ran"
            if not data.not_run_required
            else "not run: " + ", ".join(data.not_run_required),
        ),
    )
    approve = policy == Policy.AUTO and all(g.passed for g in gates)
    return GateOutcome(gates=gates, verdict=Verdict.APPROVE if approve else Verdict.REVIEW)


def may_approve(outcome_gates: Collection[Gate], policy: Policy) -> str | None:
    """None when a person may approve now, else the reason they may not."""
    failed = [g.name for g in outcome_gates if not g.passed]
    if policy == Policy.NEVER_AUTO and failed:
        return (
            "the review policy is never_auto and these gates fail: "
            + ", ".join(failed)
            + "; request changes or reject"
        )
    return None
