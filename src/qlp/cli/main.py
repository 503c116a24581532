"""The `qlp` command line. Thin: parse, call the engine, render (DESIGN.md §2)."""

from __future__ import annotations

import asyncio
import platform
import signal
import sys
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.text import Text
from typer.core import TyperGroup

from qlp import __version__
from qlp.cli.audit import app as audit_app
from qlp.cli.capsule import app as capsule_app
from qlp.cli.capsule import keys_app
from qlp.cli.common import (
    STATE,
    clip,
    console,
    err_console,
    handle_errors,
    print_json,
    settings,
)
from qlp.cli.doctor import doctor_command
from qlp.cli.review import app as review_app
from qlp.cli.safetext import plain
from qlp.cli.sandbox import app as sandbox_app
from qlp.cli.users import app as users_app
from qlp.domain.states import DECIDABLE, STARTABLE, IntentStatus, require_state
from qlp.errors import QLPError, UserInputError

# `qlp --help` and `qlp version` start in a fraction of a second because nothing heavy (the
# engine, the LLM SDKs, SQLAlchemy, FastAPI) is imported at the top of the CLI's modules: a
# command imports what it needs when it runs (tests/unit/cli/test_startup.py keeps it so;
# bench/cli_startup.py measures it).
if TYPE_CHECKING:
    from qlp.config import Settings
    from qlp.domain.events import Event
    from qlp.engine.wiring import Runtime
    from qlp.store.base import IntentRecord

# The same values as qlp.cli.views (which imports the renderers and the stores).
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CANCELLED = 130

RUN_HELP = """Plan and build an intent, showing live progress.

Exit codes: 0 the intent completed (approved and packaged); 1 it failed (see the error
line); 2 bad input or configuration; 3 it is waiting for review (decide with `qlp review`);
130 cancelled with Ctrl-C (continue with `qlp resume ID`).
"""


# Global flags accepted anywhere on the command line before a `--`.
GLOBAL_FLAGS = ("--debug", "--quiet", "-q")


class _RootGroup(TyperGroup):
    """The root command, where `--debug` and `--quiet` are accepted anywhere before a `--`:
    every error line says "run again with --debug", and the user adds it at the end."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:  # typer's own click Context
        end = args.index("--") if "--" in args else len(args)
        flags = [a for a in GLOBAL_FLAGS if a in args[:end]]
        if flags:
            args = [*flags, *(a for a in args[:end] if a not in GLOBAL_FLAGS), *args[end:]]
        return super().parse_args(ctx, args)


app = typer.Typer(
    name="qlp",
    cls=_RootGroup,
    help="QLP, the Quantum Layer Platform: from an intent to a tested, signed project.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=True,  # --install-completion / --show-completion for bash, zsh, fish
)
intents_app = typer.Typer(help="Inspect intents.", no_args_is_help=True)
db_app = typer.Typer(help="Database maintenance.", no_args_is_help=True)
app.add_typer(intents_app, name="intents")
app.add_typer(db_app, name="db")
app.add_typer(sandbox_app, name="sandbox")
app.add_typer(capsule_app, name="capsule")
app.add_typer(keys_app, name="keys")
app.add_typer(review_app, name="review")
app.add_typer(users_app, name="user")
app.add_typer(audit_app, name="audit")
app.command("doctor")(doctor_command)

LlmOption = Annotated[
    str | None,
    typer.Option(
        "--llm",
        help="Model to use: openai[:MODEL], azure:DEPLOYMENT, anthropic[:MODEL] or "
        "scripted:PATH (overrides QLP_LLM_PROVIDER).",
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]


@app.callback()
def _root(
    debug: Annotated[
        bool,
        typer.Option("--debug", help="Show tracebacks on errors (anywhere on the command line)."),
    ] = False,
    quiet: Annotated[
        bool,
        typer.Option(
            "--quiet",
            "-q",
            help="Print only the result: no live progress, no event lines, no notices "
            "(`run` and `resume` print `ID STATUS`, or the JSON with --json); errors still "
            "go to stderr and exit codes are unchanged. Anywhere on the command line.",
        ),
    ] = False,
    show_version: Annotated[
        bool,
        typer.Option(
            "--version",
            is_eager=True,
            callback=lambda value: _print_version(value),
            help="Print the QLP version and exit (the same as `qlp version`).",
        ),
    ] = False,
) -> None:
    STATE["debug"] = debug
    STATE["quiet"] = quiet


def _print_version(value: bool) -> None:
    if value:
        version()
        raise typer.Exit(0)


# -- running intents --------------------------------------------------------------------
# How often the live view is drawn again without an event, so its clocks move.
TICK_S = 0.2


def _progress(as_json: bool) -> str:
    """How a run shows its progress: "live" (a terminal), "lines" (one per event, when
    piped) or "none" (--json, --quiet)."""
    if as_json or STATE.get("quiet"):
        return "none"
    return "live" if console.is_terminal else "lines"


async def _follow(
    rt: Runtime,
    intent: IntentRecord,
    work: Callable[[], Coroutine[Any, Any, IntentRecord]],
    progress: str,
) -> tuple[IntentRecord, bool]:
    """Run `work` while showing its events; Ctrl-C cancels it cleanly. Returns the intent
    as it ended and whether it was cancelled."""
    from rich.live import Live

    from qlp.cli import render

    queue = rt.bus.subscribe()
    view = render.LiveView(intent.id)
    view.seed(intent, await rt.store.get_tasks(intent.id))
    task = asyncio.create_task(work())
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGINT, task.cancel)
    loop.add_signal_handler(signal.SIGTERM, task.cancel)

    async def pump(on_event: Callable[[Event], None], tick: Callable[[], None]) -> None:
        while not task.done() or not queue.empty():
            try:
                event = await asyncio.wait_for(queue.get(), timeout=TICK_S)
            except TimeoutError:
                tick()
                continue
            on_event(event)
            if queue.empty():
                tick()

    def log_line(event: Event) -> None:
        view.apply(event)
        if progress == "lines":
            console.print(plain(render.describe(event)), soft_wrap=True)

    cancelled = False
    try:
        if progress == "live":
            # Drawn from this loop only (no refresh thread): the view is read where it is
            # changed, and it is drawn at once, before the first event arrives.
            with Live(view.render(), console=console, auto_refresh=False, transient=True) as live:
                live.refresh()
                await pump(view.apply, live.refresh)
        else:
            await pump(log_line, lambda: None)
        await task
    except asyncio.CancelledError:
        cancelled = True
    finally:
        loop.remove_signal_handler(signal.SIGINT)
        loop.remove_signal_handler(signal.SIGTERM)
        rt.bus.unsubscribe(queue)
    return await rt.store.get_intent(intent.id), cancelled


async def _drive(
    rt: Runtime,
    intent: IntentRecord,
    work: Callable[[], Coroutine[Any, Any, IntentRecord]],
    as_json: bool,
) -> int:
    """Run `work` with progress, then show how the intent ended; the exit code it means."""
    from qlp.cli import render
    from qlp.cli.views import exit_code, intent_document, print_intent

    progress = _progress(as_json)
    final, cancelled = await _follow(rt, intent, work, progress)
    if as_json:
        print_json(await intent_document(rt, final))
    elif STATE.get("quiet"):
        console.print(plain(f"{final.id} {final.status.value}", one_line=True))
        if final.status == IntentStatus.FAILED and final.error:
            err_console.print(Text.assemble("error: ", plain(final.error)), soft_wrap=True)
    else:
        if progress == "live":
            console.print(render.tasks_table(await rt.store.get_tasks(intent.id)))
        await print_intent(rt, final)
    if not as_json:
        _next_step(final, cancelled)
    return exit_code(final.status, cancelled)


def _next_step(final: IntentRecord, cancelled: bool) -> None:
    """What to do next, on stderr (also with --quiet)."""
    if cancelled or final.status == IntentStatus.CANCELLED:
        err_console.print(f"cancelled; continue with: qlp resume {final.id}")
    elif final.status == IntentStatus.FAILED:
        err_console.print(f"failed; after fixing the cause, retry with: qlp resume {final.id}")
    elif final.status == IntentStatus.REVIEWING:
        err_console.print(
            f"waiting for review; see `qlp review show {final.id}`, then "
            f"`qlp review approve {final.id}`, `qlp review reject {final.id} --reason ...` "
            f"or `qlp review changes {final.id} --feedback ...`"
        )


def _with_runtime(
    cfg: Settings, fn: Callable[[Runtime], Awaitable[int]], *, starting: bool = False
) -> int:
    """`starting`: a run's command, which says at once (on a terminal) that it is starting:
    the database may take seconds to start and migrate."""
    from qlp.engine.wiring import open_runtime

    async def main() -> int:
        status = None
        if starting and _progress(False) == "live":
            status = console.status("starting: opening the database …")
            status.start()
        try:
            async with open_runtime(cfg) as rt:
                if status is not None:
                    status.stop()
                    status = None
                return await fn(rt)
        finally:
            if status is not None:
                status.stop()

    return asyncio.run(main())


def _intent_text(argument: str | None, file: Path | None) -> str:
    """The intent from the argument, standard input (`-`) or --file, checked to be UTF-8 text
    that is not empty."""
    if argument is not None and file is not None:
        raise UserInputError("give the intent as an argument or with --file, not both")
    if argument is None and file is None:
        raise UserInputError(
            'say what to build: qlp run "...", qlp run --file PATH, or qlp run - (standard input)'
        )
    where = ""
    if file is not None or argument == "-":
        where = str(file) if file is not None else "standard input"
        try:
            data = file.read_bytes() if file is not None else sys.stdin.buffer.read()
        except OSError as exc:
            raise UserInputError(f"{where}: cannot read the intent ({exc.strerror})") from None
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise UserInputError(
                f"{where}: the intent is not valid UTF-8 (byte {exc.start + 1}); save it as UTF-8"
            ) from None
    else:
        assert argument is not None
        text = argument
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:  # undecodable bytes arrive as lone surrogates
            raise UserInputError(
                f"the intent is not valid UTF-8 (character {exc.start + 1}); "
                "write it in UTF-8 (check the terminal's encoding)"
            ) from None
    if not text.strip():
        raise UserInputError(
            f"{where + ': ' if where else ''}the intent is empty; say what to build"
        )
    return text


@app.command(help=RUN_HELP)
@handle_errors
def run(
    intent: Annotated[
        str | None,
        typer.Argument(
            help="What to build, in plain language; `-` reads it from standard input.",
            show_default=False,
        ),
    ] = None,
    file: Annotated[
        Path | None,
        typer.Option("--file", help="Read the intent from this UTF-8 text file.", dir_okay=False),
    ] = None,
    llm: LlmOption = None,
    as_json: JsonOption = False,
    max_parallel: Annotated[
        int | None,
        # max: the cap of Settings.max_parallel_tasks, checked here so the error names the flag
        typer.Option(min=1, max=256, help="Tasks run at once (QLP_MAX_PARALLEL_TASKS)."),
    ] = None,
) -> None:
    from qlp.engine.wiring import LLM_OPTION, apply_llm_spec, llm_identity

    overrides: dict[str, Any] = {}
    if max_parallel is not None:
        overrides["max_parallel_tasks"] = max_parallel
    cfg = apply_llm_spec(settings(**overrides), llm)
    text = _intent_text(intent, file)

    async def go(rt: Runtime) -> int:
        pipeline = rt.pipeline()  # a missing LLM setting fails here, before anything is stored
        # A model chosen with --llm is remembered (never its key) so that resume and review
        # continue with it.
        options = {LLM_OPTION: llm_identity(cfg)} if llm else {}
        record = await pipeline.submit(text, options=options)
        if _progress(as_json) != "none":
            console.print(f"intent {record.id} queued", highlight=False)
        return await _drive(rt, record, lambda: pipeline.run(record.id), as_json)

    raise typer.Exit(_with_runtime(cfg, go, starting=not as_json))


@app.command(
    help="Continue an interrupted, cancelled or failed intent without re-running the tasks "
    "that already succeeded. Exit codes as for `qlp run`."
)
@handle_errors
def resume(
    intent_id: Annotated[str, typer.Argument(help="Intent id (or an unambiguous prefix).")],
    llm: LlmOption = None,
    as_json: JsonOption = False,
) -> None:
    from qlp.engine.wiring import apply_llm_spec, continuing_llm

    cfg = apply_llm_spec(settings(), llm)

    async def go(rt: Runtime) -> int:
        record = await rt.store.find_intent(intent_id)
        # Work left in progress (a crash, Ctrl-C) or another attempt; a review wait is
        # refused by the pipeline, which names the command to decide with.
        require_state(record.id, record.status, STARTABLE | DECIDABLE, "nothing to resume")
        pipeline = rt.pipeline(llm=continuing_llm(rt, record, llm))
        return await _drive(rt, record, lambda: pipeline.run(record.id), as_json)

    raise typer.Exit(_with_runtime(cfg, go, starting=not as_json))


# -- inspecting -------------------------------------------------------------------------
@intents_app.command("list", help="List recent intents, newest first.")
@handle_errors
def intents_list(
    limit: Annotated[int, typer.Option(min=1, max=1000, help="How many to show.")] = 20,
    status: Annotated[IntentStatus | None, typer.Option(help="Only intents in this state.")] = None,
    as_json: JsonOption = False,
) -> None:
    from qlp.cli import render

    async def go(rt: Runtime) -> int:
        rows = await rt.store.list_intents(limit=limit, status=status)
        if as_json:
            print_json(
                [
                    {
                        "intent_id": r.id,
                        "status": r.status.value,
                        "text": r.text,
                        "created_at": r.created_at.isoformat(),
                        "tokens": r.total_tokens,
                        "error": r.error,
                    }
                    for r in rows
                ]
            )
            return EXIT_OK
        if not rows:
            console.print('no intents yet; start one with: qlp run "..."')
            return EXIT_OK
        from rich.table import Table

        table = Table(box=None, pad_edge=False)
        for col in ("intent", "status", "created", "tokens"):
            table.add_column(col, no_wrap=True)
        table.add_column("text", **clip(70))
        for r in rows:
            table.add_row(
                r.id,
                render.styled(r.status.value),
                r.created_at.strftime("%Y-%m-%d %H:%M"),
                f"{r.total_tokens:,}",
                plain((r.text.splitlines() or [""])[0], one_line=True),
            )
        console.print(table)
        return EXIT_OK

    raise typer.Exit(_with_runtime(settings(), go))


@intents_app.command("show", help="Show one intent: status, tasks, files, totals, events.")
@handle_errors
def intents_show(
    intent_id: Annotated[str, typer.Argument(help="Intent id (or an unambiguous prefix).")],
    events: Annotated[bool, typer.Option("--events", help="Also list its events.")] = False,
    as_json: JsonOption = False,
) -> None:
    from qlp.cli import render
    from qlp.cli.views import intent_document, print_intent

    async def go(rt: Runtime) -> int:
        record = await rt.store.find_intent(intent_id)
        tasks = await rt.store.get_tasks(record.id)
        files = await rt.store.get_files(record.id)
        evs = await rt.store.list_events(record.id) if events else []
        if as_json:
            data = await intent_document(rt, record)
            if events:
                data["events"] = [e.as_dict() for e in evs]
            print_json(data)
            return EXIT_OK
        await print_intent(rt, record)
        console.print(Text.assemble("\n", ("intent", "bold"), "\n", plain(record.text), "\n"))
        if tasks:
            console.print(render.tasks_table(tasks))
            for t in tasks:
                if t.error:
                    console.print(Text.assemble(f"  {t.id}: ", plain(t.error, "red")))
        if files:
            console.print("\n[bold]files[/]")
            for f in files.values():
                console.print(plain(f"  {f.path}  {f.size:,} B  ({f.task_id})", one_line=True))
        for e in evs:
            console.print(plain(render.describe(e)))
        return EXIT_OK

    raise typer.Exit(_with_runtime(settings(), go))


@capsule_app.command("list", help="Capsules built, newest first (all intents or one).")
@handle_errors
def capsule_list(
    intent_id: Annotated[
        str | None, typer.Option("--intent", help="Only this intent's capsules.")
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="How many to show.")] = 50,
    as_json: JsonOption = False,
) -> None:
    from qlp.store.reviews import ReviewStore

    async def go(rt: Runtime) -> int:
        only = (await rt.store.find_intent(intent_id)).id if intent_id else None
        rows = await ReviewStore(rt.store).capsules(only, limit=limit)
        if as_json:
            print_json(
                [
                    {
                        "id": c.id,
                        "intent_id": c.intent_id,
                        "version": c.version,
                        "parent": c.parent,
                        "size": c.size,
                        "sha256": c.sha256,
                        "uri": c.uri,
                        "decision": c.decision,
                        "created_at": c.created_at.isoformat(),
                    }
                    for c in rows
                ]
            )
        elif not rows:
            console.print("no capsules yet")
        for c in rows if not as_json else []:
            decision = (c.decision or {}).get("decision", "-")
            console.print(
                plain(f"{c.id}  v{c.version}  {c.intent_id}  {decision}  {c.size:,} B  {c.uri}")
            )
        return EXIT_OK

    raise typer.Exit(_with_runtime(settings(), go))


@app.command(
    help="Rebuild a capsule from its own transcript: the whole pipeline runs again (plan, "
    "agents, sandbox checks, gate, packaging) with the recorded model answers, and the result "
    "is compared byte for byte. Exit 0 when identical, 1 when not (the differing entries "
    "are named). Sign with the same key (same QLP_HOME or QLP_SIGNING_KEY)."
)
@handle_errors
def replay(
    capsule: Annotated[Path, typer.Argument(help="The .qlcapsule file to rebuild.")],
    as_json: JsonOption = False,
) -> None:
    from qlp.engine.quality import CapsuleIdentity
    from qlp.engine.replay import ReplayClient, ReplayResult, compare, file_sha256, load_original

    original = load_original(capsule.expanduser().resolve())
    if int(original.manifest.get("version", 1)) != 1:
        raise UserInputError(
            "replay rebuilds first versions only: a later version also depends on the review "
            "rounds that led to it, which the capsule does not record"
        )
    cfg = settings(validation_enabled=True)

    async def go(rt: Runtime) -> int:
        out_dir = rt.settings.home / "replays"
        out_dir.mkdir(parents=True, exist_ok=True)
        out = out_dir / f"{original.manifest['capsule_id']}.replay.qlcapsule"
        out.unlink(missing_ok=True)
        pipeline = rt.pipeline(
            llm=ReplayClient(original.transcript),
            replay=CapsuleIdentity(
                intent_id=str(original.manifest["intent"]["id"]),
                version=1,
                parent=None,
                decision=original.decision,
                out_path=out,
            ),
        )
        intent = await pipeline.submit(original.intent_text, options={"replay_of": str(capsule)})
        progress = _progress(as_json)
        if progress != "none":
            console.print(f"replaying as intent {intent.id}", highlight=False)
        # The same progress as `qlp run`: the whole pipeline runs again.
        final, cancelled = await _follow(rt, intent, lambda: pipeline.run(intent.id), progress)
        if cancelled:
            err_console.print(f"cancelled; the replay's intent {final.id} was not finished")
            return EXIT_CANCELLED
        if not out.exists():
            raise QLPError(
                f"the replay did not reach packaging: intent {final.id} is "
                f"{final.status.value}{': ' + final.error if final.error else ''}"
            )
        result = ReplayResult(
            original_sha256=file_sha256(original.path),
            rebuilt_sha256=file_sha256(out),
            rebuilt_path=out,
            intent_id=final.id,
            status=final.status.value,
            differing=compare(original.path, out),
        )
        if as_json:
            print_json(result.to_dict())
        else:
            console.print(plain(f"original  {result.original_sha256}  {original.path}"))
            console.print(plain(f"rebuilt   {result.rebuilt_sha256}  {out}"))
            if result.identical:
                console.print("[green]byte-identical[/]")
            else:
                console.print("[red]different[/]; entries that differ:")
                for name in result.differing:  # entry names come from the capsule file
                    console.print(plain(f"  {name}", one_line=True))
        return EXIT_OK if result.identical else EXIT_FAILED

    raise typer.Exit(_with_runtime(cfg, go, starting=not as_json))


# -- maintenance --------------------------------------------------------------------------
@db_app.command("upgrade", help="Apply database migrations (also done on every start).")
@handle_errors
def db_upgrade() -> None:
    from qlp.store.db import schema_revision

    async def go(rt: Runtime) -> int:
        current, head = await schema_revision(rt.store.engine)
        console.print(f"database schema at revision {current} (latest {head})")
        return EXIT_OK

    raise typer.Exit(_with_runtime(settings(), go))


@app.command(
    help="Serve the REST API and WebSocket streams (docs/API.md). Stop with Ctrl-C or "
    "SIGTERM: running intents keep their state and resume on the next start."
)
@handle_errors
def serve(
    host: Annotated[
        str | None, typer.Option(help="Address to listen on (QLP_SERVER_HOST, 127.0.0.1)")
    ] = None,
    port: Annotated[int | None, typer.Option(help="TCP port (QLP_SERVER_PORT, 8000)")] = None,
    worker: Annotated[
        bool,
        typer.Option(
            "--worker/--no-worker",
            help="Run intents in this process too (default), or serve the API only and let "
            "`qlp worker` processes on the same database run them.",
        ),
    ] = True,
    workers: Annotated[
        str,
        typer.Option(
            "--workers",
            metavar="N",
            help="API processes serving on the one port, 1-64 (default 1). Each runs "
            "intents too, unless --no-worker; one that dies is replaced.",
        ),
    ] = "1",
) -> None:
    try:
        processes = int(workers)
    except ValueError:
        processes = 0
    if not 1 <= processes <= 64:  # before anything loads (serve() checks it too)
        raise UserInputError(
            f"--workers: expected a number of API processes from 1 to 64, got {workers!r}"
        )

    from qlp.api.server import Listening
    from qlp.api.server import serve as run_server  # FastAPI loads only for this command

    def ready(where: Listening) -> None:
        for line in where.lines():
            console.print(line, markup=False, highlight=False, soft_wrap=True)
        for warning in where.warnings:
            err_console.print(f"warning: {warning}", markup=False, highlight=False, soft_wrap=True)

    def notice(message: str) -> None:
        err_console.print(f"warning: {message}", markup=False, highlight=False, soft_wrap=True)

    run_server(
        settings(),
        host=host,
        port=port,
        on_ready=ready,
        worker=worker,
        processes=processes,
        on_notice=notice,
    )


@app.command(help="Run intents submitted to any `qlp serve` on the same database, until SIGTERM.")
def worker(
    concurrency: Annotated[
        int | None,
        typer.Option(
            "--concurrency",
            "-c",
            min=1,
            max=64,
            help="Intents run at once (QLP_SERVER_MAX_RUNNING, 2).",
        ),
    ] = None,
) -> None:
    from qlp.cli.worker import run_worker

    sys.exit(run_worker(settings(), concurrency))


@app.command(help="List the workers on this database and what they run (exit 1: none alive).")
def workers(as_json: JsonOption = False) -> None:
    from qlp.cli.worker import list_workers

    sys.exit(list_workers(settings(), as_json))


@app.command(help="Print the QLP version.")
def version(as_json: JsonOption = False) -> None:
    info = {"qlp": __version__, "python": platform.python_version()}
    if as_json:
        print_json(info)
    else:
        console.print(f"qlp {__version__} (Python {info['python']})", highlight=False)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:  # Ctrl-C outside a run (e.g. while the database starts)
        err_console.print("interrupted")
        sys.exit(EXIT_CANCELLED)
