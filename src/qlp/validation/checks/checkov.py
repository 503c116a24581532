"""checkov over Terraform and Dockerfiles: one run for both frameworks (it starts slowly)."""

from __future__ import annotations

from qlp.domain.findings import CheckResult, Finding
from qlp.validation.checks.base import (
    Context,
    arg_paths,
    brief,
    error,
    not_applicable,
    not_run,
    outcome,
    parse_json,
)
from qlp.validation.kinds import Kind
from qlp.validation.normalize import checkov_findings, checkov_reports

FRAMEWORKS: tuple[tuple[str, Kind, str], ...] = (
    ("terraform.checkov", Kind.TERRAFORM, "terraform"),
    ("dockerfile.checkov", Kind.DOCKERFILE, "dockerfile"),
)


async def checkov_checks(ctx: Context) -> list[CheckResult]:
    wanted = [(n, k, fw, ctx.inventory.files(k)) for n, k, fw in FRAMEWORKS]
    results = [not_applicable(n, "checkov") for n, _, _, files in wanted if not files]
    wanted = [w for w in wanted if w[3]]
    if not wanted:
        return results
    if not ctx.tools.has("checkov"):
        reason = ctx.tools.missing_reason("checkov")
        return results + [not_run(n, "checkov", files, reason) for n, _, _, files in wanted]
    files = [f for *_, fs in wanted for f in fs]
    argv = ["checkov", "--skip-download", "--output", "json", "--compact", "--quiet"]
    argv += ["--framework", *[fw for _, _, fw, _ in wanted]]
    for path in arg_paths(files):
        argv += ["--file", path]
    # No BC_API_KEY: nothing is sent anywhere (and the sandbox has no network anyway).
    result = await ctx.run(argv, env={"LOG_LEVEL": "ERROR"})
    took = result.wall_s
    try:
        reports = checkov_reports(parse_json(result.stdout)) if result.stdout.strip() else []
    except ValueError:
        return results + [error(n, "checkov", fs, brief(result), took) for n, _, _, fs in wanted]
    if result.exit_code not in (0, 1) or result.killed_reason is not None:
        return results + [error(n, "checkov", fs, brief(result), took) for n, _, _, fs in wanted]
    by_type: dict[str, list[Finding]] = {}
    for report in reports:
        by_type.setdefault(str(report.get("check_type", "")), []).extend(checkov_findings(report))
    for name, _, framework, fs in wanted:
        results.append(outcome(name, "checkov", fs, by_type.get(framework, []), took))
    return results
