"""What every CLI command shares: settings loading, error rendering, JSON output."""

from __future__ import annotations

import getpass
import json
import sys
from collections.abc import Callable
from functools import wraps
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

import typer
from rich.console import Console, ConsoleDimensions
from rich.text import Text

from qlp.cli.safetext import plain
from qlp.errors import QLPError

if TYPE_CHECKING:  # the CLI starts fast: what a command needs is imported when it runs
    from qlp.config import Settings
    from qlp.engine.wiring import Runtime

P = ParamSpec("P")
R = TypeVar("R")

# Wider than any line: piped output is never wrapped nor cut (tables show whole values).
PIPE_WIDTH = 1 << 20


class OutputConsole(Console):
    """A console that wraps and clips for a terminal only.

    Without a terminal (a pipe, a file, CI), rich would wrap at 80 columns; here the width is
    unbounded, so a line is as long as its text. Emoji codes are never replaced and nothing
    is highlighted: untrusted text goes through qlp.cli.safetext.plain (README "Output")."""

    def __init__(self, *, stderr: bool = False) -> None:
        super().__init__(stderr=stderr, emoji=False, highlight=False)

    @property
    def piped(self) -> bool:
        """True when this console's stream is not a terminal (decided at each write, so a
        redirected sys.stdout counts)."""
        isatty = getattr(self.file, "isatty", None)
        try:
            return not (isatty is not None and isatty())
        except ValueError:  # a closed stream
            return True

    @property
    def size(self) -> ConsoleDimensions:
        dims = super().size
        if self._width is None and self.piped:
            return ConsoleDimensions(PIPE_WIDTH, dims.height)
        return dims

    @size.setter
    def size(self, new_size: tuple[int, int]) -> None:
        self._width, self._height = new_size


console = OutputConsole()
err_console = OutputConsole(stderr=True)


def clip(max_width: int) -> dict[str, Any]:
    """Table column settings that keep a terminal table narrow (cells cut with an ellipsis);
    none when piped, so every value is whole."""
    if console.piped:
        return {}
    return {"max_width": max_width, "overflow": "ellipsis", "no_wrap": True}


def shorten(text: str, width: int) -> str:
    """`text` cut at a word to about `width` characters on a terminal; whole when piped."""
    if console.piped or len(text) <= width:
        return text
    cut = text[: width - 1]
    if " " in cut:
        cut = cut.rsplit(" ", 1)[0]
    return cut.rstrip() + "…"


# Set by the root callback; read by `handle_errors`.
STATE: dict[str, Any] = {"debug": False}


def settings(**overrides: Any) -> Settings:
    from qlp.config import load_settings

    return load_settings(**overrides)


async def audit_cli_action(rt: Runtime, action: str, resource: str, **details: Any) -> None:
    """An audit row for a change made from the command line, as actor `cli:<login name>`."""
    from qlp.store.audit import AuditEntry, AuditStore

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
    # The message often quotes what the user typed: it is data, never markup (safetext).
    err_console.print(Text.assemble(("error:", "bold red"), " ", plain(message)), soft_wrap=True)
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
