"""Python: compile (from the parse run), ruff, bandit, and the project's tests with pytest."""

from __future__ import annotations

import json
from dataclasses import replace

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
    tests_result,
)
from qlp.validation.checks.parse import ParseOutcome
from qlp.validation.junit import JUnitError, TestsSummary, parse_junit, synthetic_failure
from qlp.validation.kinds import Kind
from qlp.validation.normalize import bandit_findings, ruff_findings

REPORTS = "/tmp/qlp-reports"  # noqa: S108 - inside the sandbox: its private /tmp
COVERAGE_RC = f"""[run]
data_file = {REPORTS}/.coverage
omit =
    */test_*.py
    */*_test.py
    */conftest.py
    */tests/*
"""


def syntax_findings(parsed: ParseOutcome, kind: str, tool: str) -> list[Finding]:
    out: list[Finding] = []
    for path, problem in sorted(parsed.results.get(kind, {}).items()):
        if problem is None:
            continue
        out.append(
            Finding(
                tool=tool,
                rule_id="syntax-error",
                severity=Severity.HIGH,
                path=path,
                line=problem.get("line") if isinstance(problem.get("line"), int) else None,
                column=problem.get("column") if isinstance(problem.get("column"), int) else None,
                message=str(problem.get("message", "does not parse")),
                category=Category.SYNTAX,
            )
        )
    return out


def parsed_check(
    ctx: Context, parsed: ParseOutcome, *, name: str, kind: Kind, tool: str, module: str = ""
) -> CheckResult:
    """A CheckResult from the shared parse run (python.compile, data.*, terraform.parse)."""
    files = ctx.inventory.files(kind)
    if not files:
        return not_applicable(name, tool)
    if kind.value in parsed.unavailable:
        return not_run(name, tool, files, ctx.tools.missing_reason(module))
    if parsed.failure is not None:
        if not ctx.tools.has("python"):
            return not_run(name, tool, files, parsed.failure)
        return error(name, tool, files, parsed.failure, parsed.duration_s)
    found = syntax_findings(parsed, kind.value, tool)
    detail = f"{len(found)} of {len(files)} file(s) do not parse" if found else "all parse"
    return outcome(name, tool, files, found, parsed.duration_s, detail)


def compile_check(ctx: Context, parsed: ParseOutcome) -> CheckResult:
    return parsed_check(ctx, parsed, name="python.compile", kind=Kind.PYTHON, tool="python")


async def ruff_check(ctx: Context) -> CheckResult:
    name, files = "python.ruff", ctx.inventory.files(Kind.PYTHON)
    if not files:
        return not_applicable(name, "ruff")
    if not ctx.tools.has("ruff"):
        return not_run(name, "ruff", files, ctx.tools.missing_reason("ruff"))
    cfg = ctx.config
    argv = ["ruff", "check", "--isolated", "--no-cache", "--ignore-noqa", "--exit-zero"]
    argv += ["--output-format", "json", "--select", ",".join(cfg.ruff_select)]
    if cfg.ruff_ignore:
        argv += ["--ignore", ",".join(cfg.ruff_ignore)]
    result = await ctx.run([*argv, "--", *arg_paths(files)])
    took = result.wall_s
    try:
        data = parse_json(result.stdout)
    except ValueError:
        return error(name, "ruff", files, brief(result), took)
    return outcome(name, "ruff", files, ruff_findings(data), took)


async def bandit_check(ctx: Context) -> CheckResult:
    name, files = "python.bandit", ctx.inventory.files(Kind.PYTHON)
    if not files:
        return not_applicable(name, "bandit")
    if not ctx.tools.has("bandit"):
        return not_run(name, "bandit", files, ctx.tools.missing_reason("bandit"))
    argv = ["bandit", "-f", "json", "-q", "--ignore-nosec", "--exit-zero"]
    if ctx.config.bandit_skip:
        argv += ["-s", ",".join(ctx.config.bandit_skip)]
    result = await ctx.run([*argv, *arg_paths(files)])
    took = result.wall_s
    try:
        data = parse_json(result.stdout)
    except ValueError:
        return error(name, "bandit", files, brief(result), took)
    return outcome(name, "bandit", files, bandit_findings(data), took)


def pytest_argv(ctx: Context) -> tuple[list[str], dict[str, str], bool]:
    """pytest's argv, the files the driver writes first, and whether coverage is on."""
    argv = ["python", "-m", "pytest", "-p", "no:cacheprovider", "-q", "--color=no"]
    argv += [f"--junitxml={REPORTS}/junit.xml", "-o", "junit_family=xunit1"]
    write: dict[str, str] = {}
    coverage = ctx.config.coverage and ctx.tools.has("pytest_cov")
    if coverage:
        argv += ["--cov=/workspace", f"--cov-config={REPORTS}/coveragerc"]
        argv += [f"--cov-report=json:{REPORTS}/coverage.json"]
        write[f"{REPORTS}/coveragerc"] = COVERAGE_RC
    return argv, write, coverage


def _coverage(text: str | None) -> float | None:
    if not text:
        return None
    try:
        value = json.loads(text)["totals"]["percent_covered"]
    except (ValueError, KeyError, TypeError):
        return None
    return round(float(value), 1) if isinstance(value, int | float) else None


async def pytest_check(ctx: Context) -> tuple[CheckResult, TestsSummary | None]:
    """Runs the whole project's tests, whatever the scope: a test task's tests must run
    against the code of the tasks it depends on."""
    name, tests = "python.pytest", ctx.inventory.python_tests()
    if not [t for t in tests if not t.endswith("conftest.py")]:
        return not_applicable(name, "pytest"), None
    if not ctx.tools.has("pytest"):
        return not_run(name, "pytest", tests, ctx.tools.missing_reason("pytest")), None
    argv, write, _ = pytest_argv(ctx)
    timeout = ctx.config.test_timeout_s
    spec = {
        "argv": argv,
        "timeout_s": timeout,
        "write": write,
        "collect": {"junit": f"{REPORTS}/junit.xml", "coverage": f"{REPORTS}/coverage.json"},
    }
    has_src = bool([f for f in ctx.inventory.all_files if f.startswith("src/")])
    pythonpath = "/workspace:/workspace/src" if has_src else "/workspace"
    env = {"PYTHONPATH": pythonpath, "COVERAGE_FILE": f"{REPORTS}/.coverage"}
    result = await ctx.run_script("testrun", spec, timeout_s=timeout + 30, env=env)
    took = result.wall_s
    try:
        data = parse_json(result.stdout)
        code, output = int(data["exit_code"]), str(data.get("output", ""))
        files = data.get("files", {})
    except (ValueError, KeyError, TypeError):
        if result.killed_reason is not None:
            summary = synthetic_failure(
                "pytest", f"the test run was {brief(result)}", result.stderr
            )
            return tests_result(name, "pytest", tests, summary, took), summary
        return error(name, "pytest", tests, brief(result), took), None
    if data.get("timed_out"):
        summary = synthetic_failure(
            "pytest", f"the tests did not finish in {timeout:.0f} s", output
        )
        return tests_result(name, "pytest", tests, summary, took), summary
    if code == 5:
        detail = "pytest collected no tests"
        return CheckResult(
            name, "pytest", CheckStatus.SKIPPED_NOT_APPLICABLE, tests, took, detail
        ), None
    junit = files.get("junit") if isinstance(files, dict) else None
    parsed: TestsSummary | None = None
    if isinstance(junit, str):
        try:
            parsed = parse_junit(junit)
        except JUnitError:
            parsed = None
    if parsed is None or (code != 0 and not parsed.failed and not parsed.errors):
        # No usable report, or pytest failed outside any test (conftest, usage, internal).
        parsed = synthetic_failure("pytest", f"pytest exited with code {code}", output)
    cov = _coverage(files.get("coverage") if isinstance(files, dict) else None)
    summary = replace(parsed, coverage_percent=cov)
    return tests_result(name, "pytest", tests, summary, took), summary
