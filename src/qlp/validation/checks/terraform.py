"""Terraform: parsed with python-hcl2 inside the sandbox (checkov runs in checkov.py)."""

from __future__ import annotations

from qlp.domain.findings import CheckResult
from qlp.validation.checks.base import Context
from qlp.validation.checks.parse import ParseOutcome
from qlp.validation.checks.python import parsed_check
from qlp.validation.kinds import Kind


def terraform_parse(ctx: Context, parsed: ParseOutcome) -> CheckResult:
    return parsed_check(
        ctx, parsed, name="terraform.parse", kind=Kind.TERRAFORM, tool="python-hcl2", module="hcl2"
    )
