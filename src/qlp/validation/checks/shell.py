"""Shell: `bash -n` per script (syntax), then shellcheck (lint)."""

from __future__ import annotations

import re

from qlp.domain.findings import Category, CheckResult, Finding, Severity
from qlp.validation.checks.base import (
    Context,
    arg_paths,
    brief,
    error,
    not_applicable,
    not_run,
    outcome,
    parse_json,
    syntax_per_file,
)
from qlp.validation.kinds import Kind
from qlp.validation.normalize import shellcheck_findings

_BASH_AT = re.compile(r"^(?P<path>.+?): line (?P<line>\d+): (?P<msg>.*)$")


def bash_error(path: str, output: str) -> Finding:
    line, message = None, output.strip().splitlines()[-1] if output.strip() else "bash -n failed"
    for text in output.splitlines():
        m = _BASH_AT.match(text.strip())
        if m:
            line, message = int(m["line"]), m["msg"]
            break
    return Finding(
        tool="bash",
        rule_id="syntax-error",
        severity=Severity.HIGH,
        path=path,
        line=line,
        message=message,
        category=Category.SYNTAX,
    )


async def bash_syntax(ctx: Context) -> CheckResult:
    files = ctx.inventory.files(Kind.SHELL)
    return await syntax_per_file(ctx, "shell.syntax", "bash", files, ["bash", "-n"], bash_error)


async def shellcheck(ctx: Context) -> CheckResult:
    name, files = "shell.shellcheck", ctx.inventory.files(Kind.SHELL)
    if not files:
        return not_applicable(name, "shellcheck")
    if not ctx.tools.has("shellcheck"):
        return not_run(name, "shellcheck", files, ctx.tools.missing_reason("shellcheck"))
    # --norc: a .shellcheckrc in the project must not switch checks off
    argv = ["shellcheck", "--norc", "--format=json1", "--severity=style", "--"]
    result = await ctx.run([*argv, *arg_paths(files)])
    took = result.wall_s
    try:
        data = parse_json(result.stdout)
    except ValueError:
        return error(name, "shellcheck", files, brief(result), took)
    # shellcheck reports parse errors (SC1xxx) too; bash -n owns syntax, so keep them as lint.
    return outcome(name, "shellcheck", files, shellcheck_findings(data), took)
