"""`qlp doctor`: is this installation ready to build? One screen, each line what to fix.

Checks, in order, each independent of the others' outcome: the configuration loads; the
home folder is a writable folder; the database answers (the embedded one is started, as any
command would); capsule storage is reachable; each sandbox backend's availability (the
configured one must pass); the model answers one 1-token request (`--no-model-call` skips
that: it is a real, if tiny, call to a paid API).
"""

from __future__ import annotations

import asyncio
import tempfile
from dataclasses import asdict, dataclass
from typing import Annotated, Any, get_args

import typer
from rich.text import Text

from qlp.cli.common import console, handle_errors, print_json
from qlp.cli.safetext import plain
from qlp.errors import QLPError

OK, WARN, FAIL = "ok", "warning", "FAILED"


@dataclass
class Finding:
    check: str
    state: str  # ok / warning / FAILED
    detail: str
    fix: str = ""


def _fix_of(exc: BaseException) -> str:
    return exc.message if isinstance(exc, QLPError) else f"{type(exc).__name__}: {exc}"


def _check_home(settings: Any) -> Finding:
    home = settings.home
    if home.exists() and not home.is_dir():
        return Finding("home", FAIL, f"{home} is not a folder", "set QLP_HOME to a folder")
    try:
        home.mkdir(parents=True, exist_ok=True, mode=0o700)
        with tempfile.TemporaryFile(dir=home):
            pass
    except OSError as exc:
        return Finding(
            "home",
            FAIL,
            f"{home}: {exc.strerror or exc}",
            "make it writable by this user, or set QLP_HOME to a folder that is",
        )
    return Finding("home", OK, str(home))


async def _check_services(settings: Any, model_call: bool) -> list[Finding]:
    from qlp.engine.wiring import make_capsule_store, make_llm, open_runtime
    from qlp.llm.base import LLMRequest, Message

    found: list[Finding] = []
    try:
        async with open_runtime(settings):
            where = "embedded" if settings.database_url is None else "QLP_DATABASE_URL"
            found.append(Finding("database", OK, f"PostgreSQL answers ({where})"))
    except Exception as exc:
        found.append(Finding("database", FAIL, "does not answer", _fix_of(exc)))
    try:
        store = make_capsule_store(settings)
        probe = store.uri_for("QL-CAP-0000000000000000", 1)
        await asyncio.wait_for(asyncio.to_thread(store.exists, probe), timeout=10)
        found.append(Finding("storage", OK, f"{store.kind} capsule store reachable"))
    except Exception as exc:
        found.append(Finding("storage", FAIL, "capsule store unreachable", _fix_of(exc)))
    if settings.llm_provider is None:
        found.append(
            Finding(
                "model",
                FAIL,
                "no model is configured",
                "set QLP_LLM_PROVIDER (openai, azure, anthropic or scripted) and its key",
            )
        )
        return found
    try:
        llm = make_llm(settings)
    except Exception as exc:
        found.append(Finding("model", FAIL, str(settings.llm_provider), _fix_of(exc)))
        return found
    name = f"{llm.provider}:{llm.model}"
    if not model_call or settings.llm_provider == "scripted":
        found.append(Finding("model", OK, f"{name} configured (not called)"))
        return found
    request = LLMRequest(
        messages=(Message(role="user", content="Reply with the word OK."),),
        max_tokens=1,
        json_mode=False,
        purpose="doctor",
    )
    try:
        await asyncio.wait_for(llm.complete(request), timeout=settings.llm_timeout_s)
        found.append(Finding("model", OK, f"{name} answered a 1-token request"))
    except Exception as exc:
        found.append(Finding("model", FAIL, f"{name} did not answer", _fix_of(exc)))
    finally:
        await llm.aclose()
    return found


def _check_sandboxes(settings: Any) -> list[Finding]:
    from qlp.config import SandboxBackend
    from qlp.engine.wiring import make_sandbox

    found = []
    for name in get_args(SandboxBackend):
        configured = name == settings.sandbox
        label = f"sandbox {name}" + (" (configured)" if configured else "")
        try:
            make_sandbox(settings, name).check()
            found.append(Finding(label, OK, "available"))
        except Exception as exc:
            state = FAIL if configured else WARN
            detail = "unusable" if configured else "not available (not configured)"
            found.append(Finding(label, state, detail, _fix_of(exc)))
    return found


def diagnose(model_call: bool) -> list[Finding]:
    from qlp.cli.common import settings as load_settings

    try:
        settings = load_settings()
    except Exception as exc:
        return [Finding("configuration", FAIL, "the settings do not load", _fix_of(exc))]
    found = [Finding("configuration", OK, "settings load"), _check_home(settings)]
    if found[-1].state == FAIL:
        return found
    found += asyncio.run(_check_services(settings, model_call))
    found += _check_sandboxes(settings)
    return found


def doctor(
    model_call: Annotated[
        bool,
        typer.Option(
            "--model-call/--no-model-call",
            help="Send the model one 1-token request (a real call; off: only check settings).",
        ),
    ] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")] = False,
) -> None:
    """Check the configuration, home folder, database, capsule storage, sandbox backends
    and the model, and say what to fix. Exit 0 when nothing failed, 1 otherwise."""
    found = diagnose(model_call)
    failed = [f for f in found if f.state == FAIL]
    if as_json:
        print_json({"ok": not failed, "checks": [asdict(f) for f in found]})
    else:
        for f in found:
            line = Text(f"{f.state:<8} {f.check:<32} ", style=_STYLE[f.state])
            line.append(plain(f.detail, one_line=True))  # paths and errors are data
            console.print(line, soft_wrap=True)
            if f.fix and f.state != OK:
                console.print(Text("         fix: ") + plain(f.fix, one_line=True), soft_wrap=True)
        verdict = "ready" if not failed else f"{len(failed)} check(s) FAILED"
        console.print(Text(f"qlp doctor: {verdict}"), soft_wrap=True)
    if failed:
        raise typer.Exit(1)


_STYLE = {OK: "green", WARN: "yellow", FAIL: "bold red"}
doctor_command = handle_errors(doctor)
__all__ = ["diagnose", "doctor_command"]
