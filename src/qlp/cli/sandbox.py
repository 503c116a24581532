"""`qlp sandbox`: which isolation backends this host has, and running one command in one."""

from __future__ import annotations

import asyncio
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Annotated, Any, get_args

import typer
from rich.table import Table

from qlp.cli.common import console, err_console, handle_errors, print_json, settings
from qlp.cli.safetext import escape, plain
from qlp.errors import QLPError, SandboxError, UserInputError
from qlp.sandbox.base import ExecResult, Sandbox
from qlp.sandbox.selftest import SelfTest, ptrace_policy, self_test

app = typer.Typer(
    help="Check the sandbox backends on this host, or run one command in a sandbox.",
    no_args_is_help=True,
)


def backends() -> tuple[str, ...]:
    from qlp.config import SandboxBackend  # here, not at the top: the CLI starts fast

    return get_args(SandboxBackend)


SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgKMG]?)i?[bB]?\s*$")


def parse_size(text: str) -> int:
    """'512M', '1G', '64k' or a plain number of MiB -> bytes."""
    match = SIZE.match(text)
    if match is None:
        raise UserInputError(f"--memory {text!r}: use a size like 512M or 2G")
    number, unit = float(match.group(1)), match.group(2).lower()
    scale = {"k": 1024, "m": 1024**2, "g": 1024**3, "": 1024**2}[unit]
    return int(number * scale)


def _check_one(name: str) -> tuple[SelfTest, bool]:
    from qlp.engine.wiring import make_sandbox  # here, not at the top: the CLI starts fast

    sb: Any = make_sandbox(settings(), name)  # type: ignore[arg-type]
    try:
        sb.check()
    except QLPError as exc:
        return SelfTest(name, error=exc.message), False
    return asyncio.run(self_test(sb)), True


@app.command("check")
@handle_errors
def check(
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """List the backends available here and self-test each (exit 1 if the configured one fails)."""
    configured = settings().sandbox
    reports: list[tuple[SelfTest, bool]] = [_check_one(name) for name in backends()]
    policy = ptrace_policy()
    if as_json:
        print_json(
            {
                "configured": configured,
                "host": {"ptrace_policy": policy},
                "backends": [dict(r.to_dict(), available=avail) for r, avail in reports],
            }
        )
    else:
        table = Table(title=f"sandbox backends (configured: {configured})")
        for col in ("backend", "available", "self-test", "detail"):
            table.add_column(col)
        for report, avail in reports:
            mark = " *" if report.backend == configured else ""
            if not avail:
                table.add_row(report.backend + mark, "no", "-", plain(report.error or ""))
                continue
            failed = [c for c in report.checks if not c.ok]
            detail = report.error or "; ".join(f"{c.name}: {c.detail}" for c in failed)
            verdict = "[green]passed[/]" if report.ok else "[red]FAILED[/]"
            table.add_row(
                report.backend + mark, "yes", verdict, plain(detail or f"{report.seconds:.2f}s")
            )
        console.print(table)
        console.print(f"host ptrace policy: {policy}", highlight=False)
    mine = next(r for r, _ in reports if r.backend == configured)
    if not mine.ok:
        err_console.print(
            f"[bold red]error:[/] the configured sandbox ({configured}) is not usable: "
            f"{escape(mine.error or 'self-test failed')}",
            highlight=False,
        )
        raise typer.Exit(1)


def _print_result(result: ExecResult) -> None:
    if result.stdout:
        sys.stdout.write(result.stdout)
        if not result.stdout.endswith("\n"):
            sys.stdout.write("\n")
    if result.stderr:
        sys.stderr.write(result.stderr)
        if not result.stderr.endswith("\n"):
            sys.stderr.write("\n")
    parts = [f"exit {result.exit_code}"]
    if result.killed_reason is not None:
        parts.append(f"killed: {result.killed_reason.value}")
    parts.append(f"wall {result.wall_s:.3f}s")
    if result.cpu_s is not None:
        parts.append(f"cpu {result.cpu_s:.3f}s")
    if result.peak_memory_bytes:
        parts.append(f"peak {result.peak_memory_bytes / 2**20:.1f} MiB")
    if result.stdout_truncated or result.stderr_truncated:
        parts.append("output truncated")
    err_console.print(f"[dim]{result.backend}: {', '.join(parts)}[/]", highlight=False)


async def _run(sb: Sandbox, workspace: Path, cmd: list[str], limits: Any) -> ExecResult:
    async with sb.session(workspace) as session:
        return await session.run(cmd, limits=limits)


@app.command(
    "run", context_settings={"allow_interspersed_args": False, "ignore_unknown_options": True}
)
@handle_errors
def run(
    cmd: Annotated[list[str], typer.Argument(help="The command and its arguments, after --.")],
    backend: Annotated[
        str | None, typer.Option(help="bubblewrap, docker or gvisor (default: QLP_SANDBOX).")
    ] = None,
    workspace: Annotated[
        Path | None,
        typer.Option(help="Directory seen as /workspace (default: a new empty one)."),
    ] = None,
    timeout: Annotated[float | None, typer.Option(help="Wall-clock limit in seconds.")] = None,
    memory: Annotated[str | None, typer.Option(help="Memory limit, e.g. 512M or 2G.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the ExecResult as JSON.")] = False,
) -> None:
    """Run one command in the sandbox and print how it ended (exit 1 unless it succeeded)."""
    if backend is not None and backend not in backends():
        raise UserInputError(f"--backend {backend!r}: use one of {', '.join(backends())}")
    if timeout is not None and timeout <= 0:
        raise UserInputError("--timeout must be positive")
    from qlp.engine.wiring import make_sandbox

    sb = make_sandbox(settings(), backend)  # type: ignore[arg-type]
    changes: dict[str, Any] = {}
    if timeout is not None:
        changes["timeout_s"] = timeout
    if memory is not None:
        changes["memory_bytes"] = parse_size(memory)
    limits = sb.default_limits.with_(**changes)
    temp: Path | None = None
    if workspace is None:
        temp = Path(tempfile.mkdtemp(prefix="qlp-sandbox-run-"))
    try:
        sb.check()
        result = asyncio.run(_run(sb, workspace or temp or Path("."), cmd, limits))
    finally:
        if temp is not None:
            shutil.rmtree(temp, ignore_errors=True)
    if as_json:
        print_json(result.to_dict())
    else:
        _print_result(result)
    if not result.ok:
        raise typer.Exit(1)


@app.command("build-image")
@handle_errors
def build_image(
    tag: Annotated[
        str | None, typer.Option(help="Image tag (default: the configured python image).")
    ] = None,
    slim: Annotated[
        bool, typer.Option(help="Only the runtime's Python environment, no other tool trees.")
    ] = False,
) -> None:
    """Build the Docker sandbox image from this host's runtime environment (no registry)."""
    from qlp.engine.wiring import make_sandbox
    from qlp.sandbox.docker_backend import DockerSandbox
    from qlp.sandbox.docker_image import build_image as build
    from qlp.sandbox.runtime import resolve_runtime

    s = settings()
    sb = make_sandbox(s, "docker")
    if not isinstance(sb, DockerSandbox):  # pragma: no cover - wiring guarantees it
        raise SandboxError("docker backend expected")
    name = tag or sb.image_for("python")
    runtime = resolve_runtime(s.sandbox_runtime, s.home)
    with console.status(f"building {name} from {runtime} ..."):
        image_id = build(sb.client(), runtime, name, s.sandbox_uid, s.sandbox_gid, slim=slim)
    console.print(f"built {name} ({image_id[:19]})")
