"""JavaScript: `node --check` per file, `node --test` when the project has tests.
TypeScript (and JSX, which node cannot parse): syntax diagnostics of the TypeScript compiler."""

from __future__ import annotations

import re

from qlp.domain.findings import Category, CheckResult, CheckStatus, Finding, Severity
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
    tests_result,
)
from qlp.validation.junit import JUnitError, TestsSummary, parse_junit, synthetic_failure
from qlp.validation.kinds import Kind
from qlp.validation.normalize import project_path

_NODE_AT = re.compile(r"^(?:/workspace/|\./)?(?P<path>.+?):(?P<line>\d+)$")
_TSC = re.compile(
    r"^(?P<path>.+?)\((?P<line>\d+),(?P<col>\d+)\): error TS(?P<code>\d+): (?P<msg>.*)$"
)
REPORTS = "/tmp/qlp-reports"  # noqa: S108 - inside the sandbox: its private /tmp


def node_error(path: str, output: str) -> Finding:
    """node --check's report: "FILE:LINE", the source line, a caret, "SyntaxError: ..."."""
    lines = output.splitlines()
    line = None
    for text in lines[:3]:
        m = _NODE_AT.match(text.strip())
        if m:
            line = int(m["line"])
            break
    message = next((t.strip() for t in lines if "Error:" in t), lines[-1] if lines else "")
    return Finding(
        tool="node",
        rule_id="syntax-error",
        severity=Severity.HIGH,
        path=path,
        line=line,
        message=message or "node --check failed",
        category=Category.SYNTAX,
    )


async def node_check(ctx: Context) -> CheckResult:
    files = ctx.inventory.files(Kind.JAVASCRIPT)
    return await syntax_per_file(
        ctx, "javascript.check", "node", files, ["node", "--check"], node_error
    )


async def node_test(ctx: Context) -> tuple[CheckResult, TestsSummary | None]:
    """`node --test` in the project root: node finds the test files by its own patterns."""
    name, tests = "javascript.test", ctx.inventory.js_tests()
    if not tests:
        return not_applicable(name, "node"), None
    if not ctx.tools.has("node"):
        return not_run(name, "node", tests, ctx.tools.missing_reason("node")), None
    timeout = ctx.config.test_timeout_s
    spec = {
        "argv": [
            "node",
            "--test",
            "--test-reporter=junit",
            f"--test-reporter-destination={REPORTS}/node-junit.xml",
        ],
        "timeout_s": timeout,
        "collect": {"junit": f"{REPORTS}/node-junit.xml"},
        "write": {f"{REPORTS}/.keep": ""},
    }
    result = await ctx.run_script("testrun", spec, timeout_s=timeout + 30)
    took = result.wall_s
    try:
        data = parse_json(result.stdout)
        code, output = int(data["exit_code"]), str(data.get("output", ""))
        junit = data.get("files", {}).get("junit")
    except (ValueError, KeyError, TypeError, AttributeError):
        if result.killed_reason is None:
            return error(name, "node", tests, brief(result), took), None
        failed_run = synthetic_failure("node --test", f"the test run was {brief(result)}", "")
        return tests_result(name, "node", tests, failed_run, took), failed_run
    if data.get("timed_out"):
        failed_run = synthetic_failure(
            "node --test", f"the tests did not finish in {timeout:.0f} s", output
        )
        return tests_result(name, "node", tests, failed_run, took), failed_run
    parsed: TestsSummary | None = None
    if isinstance(junit, str) and junit.strip():
        try:
            parsed = parse_junit(junit)
        except JUnitError:
            parsed = None
    if parsed is None or (code != 0 and not parsed.failed and not parsed.errors):
        parsed = synthetic_failure("node --test", f"node --test exited with code {code}", output)
    if not parsed.ran:
        detail = "node --test found no tests"
        return CheckResult(
            name, "node", CheckStatus.SKIPPED_NOT_APPLICABLE, tests, took, detail
        ), None
    return tests_result(name, "node", tests, parsed, took), parsed


def tsc_findings(stdout: str) -> list[Finding]:
    """Only TS1xxx diagnostics (the parser's); type errors need the project's dependencies."""
    out: list[Finding] = []
    for text in stdout.splitlines():
        m = _TSC.match(text.strip())
        if not m or not m["code"].startswith("1") or len(m["code"]) != 4:
            continue
        out.append(
            Finding(
                tool="tsc",
                rule_id=f"TS{m['code']}",
                severity=Severity.HIGH,
                path=project_path(m["path"]),
                line=int(m["line"]),
                column=int(m["col"]),
                message=m["msg"],
                category=Category.SYNTAX,
            )
        )
    return out


async def typescript_check(ctx: Context) -> CheckResult:
    name, files = "typescript.check", ctx.inventory.files(Kind.TYPESCRIPT)
    if not files:
        return not_applicable(name, "tsc")
    if not ctx.tools.has("tsc"):
        return not_run(name, "tsc", files, ctx.tools.missing_reason("tsc"))
    argv = ["tsc", "--noEmit", "--pretty", "false", "--noResolve", "--skipLibCheck"]
    argv += ["--allowJs", "--jsx", "preserve", "--target", "es2022"]
    result = await ctx.run([*argv, *arg_paths(files)])
    took = result.wall_s
    located = [line for line in result.stdout.splitlines() if _TSC.match(line.strip())]
    if result.killed_reason is not None or result.exit_code not in (0, 1, 2):
        return error(name, "tsc", files, brief(result), took)
    if result.exit_code != 0 and not located:
        # an error about the compiler's options or set-up, not about a file
        return error(name, "tsc", files, brief(result), took)
    return outcome(name, "tsc", files, tsc_findings(result.stdout), took)
