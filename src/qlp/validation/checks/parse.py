"""One sandboxed run of sandboxed/inspect_files.py: compiles the Python files, parses the
JSON, YAML, TOML and Terraform files and checks the docs. Its results feed python.compile,
data.*, terraform.parse and docs (see python.py, data.py, terraform.py, docs.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from qlp.validation.checks.base import Context, brief, parse_json
from qlp.validation.kinds import Kind

PARSED_KINDS = (Kind.PYTHON, Kind.JSON, Kind.YAML, Kind.TOML, Kind.TERRAFORM)


@dataclass(frozen=True)
class ParseOutcome:
    """Per kind: {path: None (fine) or {"line", "column", "message"}}."""

    results: dict[str, dict[str, dict[str, Any] | None]] = field(default_factory=dict)
    unavailable: dict[str, str] = field(default_factory=dict)
    docs: dict[str, Any] = field(default_factory=dict)
    lines: dict[str, int] = field(default_factory=dict)  # non-blank lines of linted files
    failure: str | None = None  # the script itself did not run: every part is an error
    duration_s: float = 0.0


async def inspect(ctx: Context) -> ParseOutcome:
    inv = ctx.inventory
    spec: dict[str, Any] = {kind.value: list(inv.files(kind)) for kind in PARSED_KINDS}
    spec["markdown"] = list(inv.files(Kind.MARKDOWN))
    spec["required_docs"] = list(ctx.config.required_docs)
    spec["count_lines"] = list(inv.files(Kind.PYTHON)) + list(inv.files(Kind.SHELL))
    if not ctx.tools.has("python"):
        return ParseOutcome(failure=ctx.tools.missing_reason("python"))
    result = await ctx.run_script("inspect_files", spec)
    took = result.wall_s
    try:
        data = parse_json(result.stdout)
        return ParseOutcome(
            results=dict(data["results"]),
            unavailable=dict(data.get("unavailable", {})),
            docs=dict(data.get("docs", {})),
            lines={str(k): int(v) for k, v in dict(data.get("lines", {})).items()},
            duration_s=took,
        )
    except (ValueError, KeyError, TypeError):
        return ParseOutcome(failure=f"the parse script failed: {brief(result)}", duration_s=took)
