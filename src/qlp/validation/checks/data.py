"""JSON, YAML and TOML: parsed inside the sandbox (sandboxed/inspect_files.py) with json,
yaml.safe_load_all and tomllib: safe loaders that build plain data and run nothing."""

from __future__ import annotations

from qlp.domain.findings import CheckResult
from qlp.validation.checks.base import Context
from qlp.validation.checks.parse import ParseOutcome
from qlp.validation.checks.python import parsed_check
from qlp.validation.kinds import Kind


def data_checks(ctx: Context, parsed: ParseOutcome) -> list[CheckResult]:
    return [
        parsed_check(ctx, parsed, name="data.json", kind=Kind.JSON, tool="json"),
        parsed_check(ctx, parsed, name="data.yaml", kind=Kind.YAML, tool="pyyaml", module="yaml"),
        parsed_check(ctx, parsed, name="data.toml", kind=Kind.TOML, tool="tomllib"),
    ]
