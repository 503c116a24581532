"""What every check receives: the session, the inventory, the tools the sandbox offers."""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from qlp.domain.findings import CheckResult, CheckStatus, Finding, sort_findings
from qlp.sandbox.base import ExecResult, SandboxSession
from qlp.validation.config import ValidationConfig
from qlp.validation.junit import TestsSummary
from qlp.validation.kinds import Inventory
from qlp.validation.normalize import project_path
from qlp.validation.sandboxed import script

SETUP = "run scripts/setup"
# How to get each tool into the sandbox: scripts/setup does all of these.
INSTALL_HINTS: Mapping[str, str] = {
    "python": f"a Python interpreter in the sandbox runtime environment ({SETUP})",
    "ruff": f"pip package ruff in the sandbox runtime ({SETUP})",
    "bandit": f"pip package bandit in the sandbox runtime ({SETUP})",
    "semgrep": f"semgrep in the sandbox runtime's tools/semgrep ({SETUP})",
    "checkov": f"checkov in the sandbox runtime's tools/checkov ({SETUP})",
    "node": "Debian package nodejs (/usr/bin/node)",
    "tsc": f"npm package typescript in the sandbox runtime's node/ folder ({SETUP} with npm)",
    "bash": "Debian package bash",
    "shellcheck": "Debian package shellcheck",
    "pytest": f"pip package pytest in the sandbox runtime ({SETUP})",
    "pytest_cov": f"pip package pytest-cov in the sandbox runtime ({SETUP})",
    "yaml": f"pip package pyyaml in the sandbox runtime ({SETUP})",
    "hcl2": f"pip package python-hcl2 in the sandbox runtime ({SETUP})",
}
EXECUTABLES = (
    "python",
    "ruff",
    "bandit",
    "semgrep",
    "checkov",
    "node",
    "tsc",
    "bash",
    "shellcheck",
)
MODULES = ("pytest", "pytest_cov", "yaml", "hcl2")


@dataclass(frozen=True)
class Toolbox:
    """What the sandbox's PATH and runtime Python offer (found by sandboxed/discover.py)."""

    executables: Mapping[str, str | None]
    modules: Mapping[str, bool]
    ca_file: str | None = None

    def has(self, name: str) -> bool:
        if name in self.modules:
            return bool(self.modules[name])
        return bool(self.executables.get(name))

    def missing_reason(self, name: str) -> str:
        what = "Python module" if name in MODULES else "program"
        hint = INSTALL_HINTS.get(name, SETUP)
        return f"{what} `{name}` is not available inside the sandbox; install {hint}"


@dataclass
class Context:
    session: SandboxSession
    config: ValidationConfig
    inventory: Inventory
    tools: Toolbox
    semaphore: asyncio.Semaphore
    sandbox_time_s: list[float] = field(default_factory=list)

    async def run(
        self,
        argv: Sequence[str],
        *,
        timeout_s: float | None = None,
        stdin: bytes | None = None,
        env: Mapping[str, str] | None = None,
    ) -> ExecResult:
        limits = self.config.limits(timeout_s or self.config.tool_timeout_s)
        merged = {**self.config.extra_env, **(env or {})}
        async with self.semaphore:
            started = time.monotonic()
            try:
                return await self.session.run(argv, env=merged, limits=limits, stdin=stdin)
            finally:
                self.sandbox_time_s.append(time.monotonic() - started)

    async def run_script(
        self,
        name: str,
        spec: Any,
        *,
        timeout_s: float | None = None,
        env: Mapping[str, str] | None = None,
    ) -> ExecResult:
        """Run sandboxed/<name>.py with the runtime's Python, spec as JSON on its stdin."""
        return await self.run(
            ["python", "-c", script(name)],
            timeout_s=timeout_s,
            stdin=json.dumps(spec).encode(),
            env=env,
        )


def shell_loop(command: Sequence[str]) -> tuple[list[str], str]:
    """`sh -c` that runs `command FILE` for each file and frames each output with a marker
    holding a random nonce, so no file's content can forge the framing. Returns the argv
    prefix (append the files) and the nonce."""
    nonce = secrets.token_hex(8)
    body = (
        'for f do printf "\\n@@%s@@ %s\\n" "$QLP_NONCE" "$f"; '
        + " ".join(command)
        + ' "$f" 2>&1; printf "\\n@@%s-rc@@ %s\\n" "$QLP_NONCE" "$?"; done'
    )
    return ["sh", "-c", body, "sh"], nonce


def split_loop(stdout: str, nonce: str) -> dict[str, tuple[int | None, str]]:
    """Output of shell_loop -> {file: (exit code, output)}."""
    out: dict[str, tuple[int | None, str]] = {}
    current: str | None = None
    buf: list[str] = []
    start, end = f"@@{nonce}@@ ", f"@@{nonce}-rc@@ "
    for line in stdout.splitlines():
        if line.startswith(start):
            current, buf = line[len(start) :], []
        elif line.startswith(end) and current is not None:
            code = line[len(end) :].strip()
            out[current] = (int(code) if code.isdigit() else None, "\n".join(buf).strip())
            current = None
        elif current is not None:
            buf.append(line)
    return out


def arg_paths(files: Sequence[str]) -> list[str]:
    """Project paths as arguments: "./" first, so a file named "-x" is never an option."""
    return [f"./{f}" for f in files]


def parse_json(text: str) -> Any:
    """The JSON document a tool printed (some tools print a line or two before it)."""
    text = text.strip()
    try:
        return json.loads(text)
    except ValueError:
        pass
    for opener in ("{", "["):
        at = text.find(opener)
        if at > 0:
            try:
                return json.loads(text[at:])
            except ValueError:
                continue
    raise ValueError("the tool's output is not JSON")


def brief(result: ExecResult, limit: int = 600) -> str:
    """A short account of how a command ended, for a check's detail."""
    if result.killed_reason is not None:
        return f"stopped by the sandbox ({result.killed_reason.value} limit)"
    text = (result.stderr.strip() or result.stdout.strip()).splitlines()
    tail = " | ".join(text[-4:])
    return f"exit {result.exit_code}: {tail[-limit:]}" if tail else f"exit {result.exit_code}"


def not_applicable(name: str, tool: str) -> CheckResult:
    return CheckResult(
        name=name, tool=tool, status=CheckStatus.SKIPPED_NOT_APPLICABLE, detail="no files"
    )


def not_run(name: str, tool: str, files: Sequence[str], reason: str) -> CheckResult:
    return CheckResult(
        name=name,
        tool=tool,
        status=CheckStatus.NOT_RUN,
        files=tuple(files),
        detail=reason,
        not_run_reason=reason,
    )


def error(
    name: str, tool: str, files: Sequence[str], detail: str, duration_s: float
) -> CheckResult:
    return CheckResult(
        name=name,
        tool=tool,
        status=CheckStatus.ERROR,
        files=tuple(files),
        duration_s=duration_s,
        detail=detail,
    )


def outcome(
    name: str,
    tool: str,
    files: Sequence[str],
    findings: Sequence[Finding],
    duration_s: float,
    detail: str = "",
) -> CheckResult:
    """PASSED when there is nothing to report, else FAILED, with the findings sorted."""
    found = sort_findings(list(findings))
    status = CheckStatus.FAILED if found else CheckStatus.PASSED
    return CheckResult(
        name=name,
        tool=tool,
        status=status,
        files=tuple(files),
        duration_s=duration_s,
        detail=detail or (f"{len(found)} finding(s)" if found else "clean"),
        findings=tuple(found),
    )


async def discover(
    session: SandboxSession, config: ValidationConfig, semaphore: asyncio.Semaphore
) -> Toolbox:
    spec = {"executables": list(EXECUTABLES), "modules": list(MODULES)}
    async with semaphore:
        result = await session.run(
            ["python", "-c", script("discover")],
            env=config.extra_env,
            limits=config.limits(60.0),
            stdin=json.dumps(spec).encode(),
        )
    try:
        data = json.loads(result.stdout)
        return Toolbox(
            executables={k: v for k, v in data["executables"].items() if isinstance(k, str)},
            modules={k: bool(v) for k, v in data["modules"].items()},
            ca_file=data.get("ca_file") if isinstance(data.get("ca_file"), str) else None,
        )
    except (ValueError, KeyError, TypeError, AttributeError):
        # No Python in the sandbox (or it cannot start): every tool is reported as missing.
        return Toolbox(executables={}, modules={})


def tests_result(
    name: str, tool: str, files: Sequence[str], summary: TestsSummary, took: float
) -> CheckResult:
    """A test run's CheckResult: FAILED when any test failed or errored."""
    failing = summary.failed + summary.errors
    detail = (
        f"{summary.passed} passed, {summary.failed} failed, {summary.errors} errors, "
        f"{summary.skipped} skipped"
    )
    if summary.coverage_percent is not None:
        detail += f"; coverage {summary.coverage_percent}%"
    status = CheckStatus.FAILED if failing else CheckStatus.PASSED
    return CheckResult(name, tool, status, tuple(files), took, detail)


async def syntax_per_file(
    ctx: Context,
    name: str,
    tool: str,
    files: Sequence[str],
    command: Sequence[str],
    to_finding: Callable[[str, str], Finding],
) -> CheckResult:
    """Run `command FILE` once per file in one sandboxed shell loop; a file whose run exits
    non-zero becomes `to_finding(path, output)`. (bash -n, node --check.)"""
    if not files:
        return not_applicable(name, tool)
    if not ctx.tools.has(tool):
        return not_run(name, tool, files, ctx.tools.missing_reason(tool))
    argv, nonce = shell_loop(command)
    result = await ctx.run([*argv, *arg_paths(files)], env={"QLP_NONCE": nonce})
    per_file = split_loop(result.stdout, nonce)
    if len(per_file) != len(files):
        return error(name, tool, files, brief(result), result.wall_s)
    found = [
        to_finding(project_path(path), text) for path, (code, text) in per_file.items() if code != 0
    ]
    return outcome(name, tool, files, found, result.wall_s)
