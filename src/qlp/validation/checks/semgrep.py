"""semgrep with QLP's own rule set (rules/semgrep.yml): never a registry rule, never a fetch."""

from __future__ import annotations

from importlib import resources

from qlp.domain.findings import CheckResult
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
from qlp.validation.normalize import semgrep_findings

SCANNED = (Kind.PYTHON, Kind.JAVASCRIPT, Kind.TYPESCRIPT, Kind.SHELL)
RULES_IN_SANDBOX = "/tmp/qlp-semgrep-rules.yml"  # noqa: S108 - the sandbox's private /tmp


def rules_text() -> bytes:
    return resources.files("qlp.validation").joinpath("rules/semgrep.yml").read_bytes()


async def semgrep_check(ctx: Context) -> CheckResult:
    name = "semgrep"
    files = sorted(f for kind in SCANNED for f in ctx.inventory.files(kind))
    if not files:
        return not_applicable(name, "semgrep")
    if not ctx.tools.has("semgrep"):
        return not_run(name, "semgrep", files, ctx.tools.missing_reason("semgrep"))
    scan = [
        "semgrep",
        "scan",
        "--config",
        RULES_IN_SANDBOX,
        "--metrics=off",
        "--disable-version-check",
        "--json",
        "--quiet",
        "--no-git-ignore",
        "--disable-nosem",  # `# nosemgrep` is written by the author under review
        "--jobs=1",
        "--timeout=30",
        "--max-target-bytes=2000000",
        "--",
        *arg_paths(files),
    ]
    # The rules travel on stdin into the sandbox's private /tmp; semgrep reads only that file.
    argv = ["sh", "-c", f'cat > {RULES_IN_SANDBOX} && exec "$@"', "sh", *scan]
    env = {"SEMGREP_SEND_METRICS": "off", "SEMGREP_ENABLE_VERSION_CHECK": "0"}
    if ctx.tools.ca_file:
        env["SSL_CERT_FILE"] = ctx.tools.ca_file
    result = await ctx.run(argv, stdin=rules_text(), env=env)
    took = result.wall_s
    try:
        data = parse_json(result.stdout)
    except ValueError:
        return error(name, "semgrep", files, brief(result), took)
    if not isinstance(data, dict) or not isinstance(data.get("results"), list):
        return error(name, "semgrep", files, brief(result), took)
    errors = [e for e in data.get("errors", []) if isinstance(e, dict)]
    fatal = [e for e in errors if str(e.get("level", "")).lower() == "error"]
    detail = ""
    if fatal:
        # Rule errors make the run meaningless; a file semgrep cannot parse is only noted.
        rule_errors = [e for e in fatal if "rule" in str(e.get("type", "")).lower()]
        if rule_errors:
            return error(name, "semgrep", files, str(rule_errors[0].get("message", ""))[:500], took)
        detail = f"{len(fatal)} file(s) semgrep could not analyse fully"
    found = semgrep_findings(data)
    if found and not detail:
        detail = f"{len(found)} finding(s)"
    return outcome(name, "semgrep", files, found, took, detail)
