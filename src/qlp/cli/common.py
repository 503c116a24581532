"""What every CLI command shares: settings loading, error rendering, JSON output."""

from __future__ import annotations

import getpass
import json
import sys
from collections.abc import Callable
from functools import wraps
from typing import Any, ParamSpec, TypeVar

import typer
from rich.console import Console

from qlp.config import Settings, load_settings
from qlp.engine.wiring import Runtime
from qlp.errors import QLPError
from qlp.store.audit import AuditEntry, AuditStore

P = ParamSpec("P")
R = TypeVar("R")

console = Console()
err_console = Console(stderr=True)

# Set by the root callback; read by `handle_errors`.
STATE: dict[str, Any] = {"debug": False}


def settings(**overrides: Any) -> Settings:
    return load_settings(**overrides)


async def audit_cli_action(rt: Runtime, action: str, resource: str, **details: Any) -> None:
    """An audit row for a change made from the command line, as actor `cli:<login name>`."""
    await AuditStore(rt.store).append(
        AuditEntry(
            actor=f"cli:{getpass.getuser()}",
            action=action,
            outcome="success",
            resource=resource,
            details=details,
        )
    )


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def fail(message: str, code: int = 2) -> typer.Exit:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def handle_errors(fn: Callable[P, R]) -> Callable[P, R]:
    """Turn QLPError into one line on stderr and its exit code; no traceback unless --debug."""

    @wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except QLPError as exc:
            if STATE["debug"]:
                raise
            raise fail(exc.message, exc.exit_code) from None
        except (typer.Exit, typer.Abort, KeyboardInterrupt):
            raise
        except Exception as exc:  # a bug: still one line, the traceback is behind --debug
            if STATE["debug"]:
                raise
            raise fail(
                f"unexpected error ({type(exc).__name__}: {exc}); this is a bug in QLP, "
                "run again with --debug for the traceback",
                1,
            ) from None

    return wrapper
