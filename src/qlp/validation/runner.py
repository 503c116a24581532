"""validate(): every check that applies to the workspace, run in the task's sandbox session.

    async with sandbox.session(workspace) as session:
        report = await validate(session, workspace, config=ValidationConfig())

Per-file checks see `only_files` (when given) and the project's tests always run whole: a test
task's tests run against the code of the tasks it depends on.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Collection
from pathlib import Path

from qlp.domain.findings import CheckStatus, sort_findings
from qlp.sandbox.base import SandboxSession
from qlp.validation.checks.base import Context, discover
from qlp.validation.checks.checkov import checkov_checks
from qlp.validation.checks.data import data_checks
from qlp.validation.checks.docs import docs_check
from qlp.validation.checks.javascript import node_check, node_test, typescript_check
from qlp.validation.checks.parse import inspect
from qlp.validation.checks.python import bandit_check, compile_check, pytest_check, ruff_check
from qlp.validation.checks.semgrep import semgrep_check
from qlp.validation.checks.shell import bash_syntax, shellcheck
from qlp.validation.checks.terraform import terraform_parse
from qlp.validation.config import CHECKS, ValidationConfig
from qlp.validation.junit import combine
from qlp.validation.kinds import classify
from qlp.validation.report import TEST_CHECKS, ValidationReport
from qlp.validation.scoring import SYNTAX_CHECKS, ScoreInputs, score


async def validate(
    session: SandboxSession,
    workspace: Path,
    *,
    config: ValidationConfig,
    only_files: Collection[str] | None = None,
) -> ValidationReport:
    started = time.monotonic()
    inventory = await asyncio.to_thread(
        classify, workspace, only_files=only_files, max_files=config.max_files
    )
    semaphore = asyncio.Semaphore(config.concurrency)
    sandbox_times: list[float] = []
    t0 = time.monotonic()
    tools = await discover(session, config, semaphore)
    sandbox_times.append(time.monotonic() - t0)
    ctx = Context(session, config, inventory, tools, semaphore, sandbox_times)

    # Slow runs first so that they overlap with the quick ones.
    async with asyncio.TaskGroup() as group:
        t_pytest = group.create_task(pytest_check(ctx))
        t_checkov = group.create_task(checkov_checks(ctx))
        t_semgrep = group.create_task(semgrep_check(ctx))
        t_node_test = group.create_task(node_test(ctx))
        t_parse = group.create_task(inspect(ctx))
        t_ruff = group.create_task(ruff_check(ctx))
        t_bandit = group.create_task(bandit_check(ctx))
        t_node = group.create_task(node_check(ctx))
        t_tsc = group.create_task(typescript_check(ctx))
        t_bash = group.create_task(bash_syntax(ctx))
        t_shellcheck = group.create_task(shellcheck(ctx))
    py_result, py_summary = t_pytest.result()
    js_result, js_summary = t_node_test.result()
    parsed = t_parse.result()
    docs, docs_facts = docs_check(ctx, parsed)
    results = [
        compile_check(ctx, parsed),
        t_ruff.result(),
        t_bandit.result(),
        py_result,
        t_node.result(),
        js_result,
        t_tsc.result(),
        t_bash.result(),
        t_shellcheck.result(),
        *data_checks(ctx, parsed),
        terraform_parse(ctx, parsed),
        *t_checkov.result(),
        t_semgrep.result(),
        docs,
    ]
    order = {name: i for i, name in enumerate(CHECKS)}
    checks = sorted(results, key=lambda c: order.get(c.name, len(order)))
    findings = sort_findings(f for c in checks for f in c.findings)
    coverage = py_summary.coverage_percent if py_summary is not None else None
    tests = combine([s for s in (py_summary, js_summary) if s is not None], coverage)
    scores = score(
        ScoreInputs(
            checks=checks, findings=findings, tests=tests, docs=docs_facts, lines=parsed.lines
        )
    )
    syntax = [c for c in checks if c.name in SYNTAX_CHECKS]
    # Clean: no syntax check failed or errored. A check that could not run is not evidence of
    # an error; the gate's required-checks rule decides about it.
    syntax_ok = not any(c.status in (CheckStatus.FAILED, CheckStatus.ERROR) for c in syntax)
    test_checks = [c for c in checks if c.name in TEST_CHECKS]
    tests_ok: bool | None
    if any(c.status == CheckStatus.ERROR for c in test_checks):
        tests_ok = False
    elif tests.ran:
        tests_ok = tests.failed + tests.errors == 0
    else:
        tests_ok = None
    return ValidationReport(
        checks=checks,
        findings=findings,
        scores=scores,
        tests=tests,
        syntax_ok=syntax_ok,
        tests_ok=tests_ok,
        not_run=[c.name for c in checks if c.status == CheckStatus.NOT_RUN],
        errors=[c.name for c in checks if c.status == CheckStatus.ERROR],
        scope=tuple(sorted(inventory.scope)) if inventory.scope is not None else None,
        files_dropped=inventory.dropped,
        duration_s=time.monotonic() - started,
        sandbox_time_s=sum(sandbox_times),
        sandbox_commands=len(sandbox_times),
    )
