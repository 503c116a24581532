"""`qlp review`: see what the gate found, and decide (approve, reject, request changes)."""

from __future__ import annotations

import asyncio
import difflib
import getpass
import os
import stat
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.text import Text

from qlp.cli.common import (
    audit_cli_action,
    console,
    handle_errors,
    print_json,
    settings,
    shorten,
)
from qlp.cli.safetext import plain
from qlp.domain.states import IntentStatus
from qlp.errors import NotRegularFileError
from qlp.safefiles import kind_of, read_in_tree

if TYPE_CHECKING:  # the rest is imported when a command runs: the CLI starts fast
    from qlp.engine.wiring import Runtime

app = typer.Typer(
    help="Intents waiting for a person: inspect them and decide.", no_args_is_help=True
)

IntentArg = Annotated[str, typer.Argument(help="Intent id (or an unambiguous prefix).")]
ByOption = Annotated[
    str | None, typer.Option("--by", help="Who decides (default: the current user).")
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]


def _run(fn: Any, llm: str | None = None) -> int:
    from qlp.engine.wiring import apply_llm_spec, open_runtime

    cfg = apply_llm_spec(settings(), llm)

    async def main() -> int:
        async with open_runtime(cfg) as rt:
            result: int = await fn(rt)
            return result

    return asyncio.run(main())


@app.command("list", help="Intents waiting for review.")
@handle_errors
def review_list(as_json: JsonOption = False) -> None:
    from qlp.store.reviews import ReviewStore

    async def go(rt: Runtime) -> int:
        rows = await rt.store.list_intents(limit=1000, status=IntentStatus.REVIEWING)
        reviews = ReviewStore(rt.store)
        items: list[dict[str, Any]] = []
        for r in rows:
            current = await reviews.current_round(r.id)
            failed = [g["name"] for g in current.gates if not g["passed"]]
            items.append(
                {
                    "intent_id": r.id,
                    "round": current.round,
                    "failed_gates": failed,
                    "overall": current.scores.get("overall"),
                    "text": r.text,
                }
            )
        if as_json:
            print_json(items)
        elif not items:
            console.print("no intent is waiting for review")
        for i in items if not as_json else []:
            failing = ", ".join(map(str, i["failed_gates"])) or "none"
            overall = "n/a" if i["overall"] is None else i["overall"]
            first_line = (str(i["text"]).splitlines() or [""])[0]
            console.print(
                plain(
                    f"{i['intent_id']}  round {i['round']}  overall {overall}  "
                    f"failing gates: {failing}  {shorten(first_line, 60)}",
                    one_line=True,
                )
            )
        return 0

    raise typer.Exit(_run(go))


def _project_files(workspace: Path) -> tuple[dict[str, bytes], list[str]]:
    """The workspace's regular files (outside __pycache__), and what was not compared.

    A symlink, FIFO, socket or device is skipped and named, not read: this only shows a
    diff, and the capsule refuses such a tree anyway. Files are read through
    qlp.safefiles, so one swapped for a FIFO during the walk is skipped, never waited on."""
    out: dict[str, bytes] = {}
    skipped: list[str] = []
    stack = [""]
    while stack:
        prefix = stack.pop()
        try:
            with os.scandir(workspace / prefix if prefix else workspace) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError:
            continue
        for entry in entries:
            rel = prefix + entry.name
            try:
                mode = entry.stat(follow_symlinks=False).st_mode
            except OSError:
                continue
            if stat.S_ISDIR(mode):
                if entry.name != "__pycache__":
                    stack.append(rel + "/")
            elif not stat.S_ISREG(mode):
                skipped.append(f"{rel} is {kind_of(mode)}, not a regular file")
            else:
                try:
                    out[rel] = read_in_tree(workspace, rel)
                except NotRegularFileError as exc:
                    skipped.append(exc.message)
                except OSError:
                    continue
    return out, sorted(skipped)


def _capsule_files(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as z:
        return {
            n.removeprefix("project/"): z.read(n)
            for n in z.namelist()
            if n.startswith("project/") and not n.endswith("/")
        }


def changes_since(before: dict[str, bytes], after: dict[str, bytes]) -> list[str]:
    """A unified diff of the text files that changed between two project trees."""
    lines: list[str] = []
    for path in sorted(set(before) | set(after)):
        a, b = before.get(path), after.get(path)
        if a == b:
            continue
        try:
            old = a.decode().splitlines(keepends=True) if a is not None else []
            new = b.decode().splitlines(keepends=True) if b is not None else []
        except UnicodeDecodeError:
            lines.append(f"binary file {path} changed\n")
            continue
        lines += difflib.unified_diff(
            old,
            new,
            fromfile=f"a/{path}" if a is not None else "/dev/null",
            tofile=f"b/{path}" if b is not None else "/dev/null",
        )
    return lines


def _diff_with_capsule(uri: str, workspace: Path) -> list[str]:
    """The changes since the last capsule (the previous round's project), when it is local."""
    path = Path(uri.removeprefix("file://"))
    if not uri.startswith("file://") or not path.exists():
        return []
    files, skipped = _project_files(workspace)
    return changes_since(_capsule_files(path), files) + [
        f"not compared: {what}\n" for what in skipped
    ]


@app.command(
    "show", help="Gates, scores, findings (file:line) and what changed since the last round."
)
@handle_errors
def review_show(intent_id: IntentArg, as_json: JsonOption = False) -> None:
    from qlp.cli import render
    from qlp.store.reviews import ReviewStore

    async def go(rt: Runtime) -> int:
        intent = await rt.store.find_intent(intent_id)
        reviews = ReviewStore(rt.store)
        rounds = await reviews.rounds(intent.id)
        current = await reviews.current_round(intent.id)
        project = [v for v in await reviews.validations(intent.id) if v.task_id is None]
        report = project[-1].report if project else {}
        findings = report.get("findings", [])
        capsules = await reviews.capsules(intent.id)
        diff: list[str] = []
        if capsules:
            previous = max(capsules, key=lambda c: c.version)
            diff = await asyncio.to_thread(_diff_with_capsule, previous.uri, Path(intent.workspace))
        if as_json:
            print_json(
                {
                    "intent_id": intent.id,
                    "status": intent.status.value,
                    **render.quality_json(rounds, capsules),
                    "findings": findings,
                    "tests": report.get("tests"),
                    "diff_since_last_round": "".join(diff),
                }
            )
            return 0
        console.print(f"[bold]{intent.id}[/]  {intent.status.value}  round {current.round}")
        console.print(render.quality(rounds, capsules))
        tests = report.get("tests") or {}
        console.print(
            f"tests     {tests.get('passed', 0)} passed, {tests.get('failed', 0)} failed, "
            f"{tests.get('errors', 0)} errors",
            highlight=False,
        )
        # Test names, messages, paths and findings come from the generated project and its
        # tools: plain text (qlp.cli.safetext), whole, one line each.
        for failure in tests.get("failures", [])[:20]:
            message = (str(failure.get("message") or "").splitlines() or [""])[0]
            console.print(
                Text.assemble(
                    "  ",
                    ("FAIL", "red"),
                    " ",
                    plain(f"{failure.get('test_id')}: {message}", one_line=True),
                )
            )
        if findings:
            console.print(f"\n[bold]findings[/] ({len(findings)})")
        for f in findings:
            console.print(
                plain(
                    f"  {f['severity']:<8} {f['path']}:{f.get('line') or '-'}  "
                    f"{f['tool']} {f['rule_id']}  {f['message']}",
                    one_line=True,
                )
            )
        if diff:
            console.print("\n[bold]changed since the last round[/]")
            console.print(plain("".join(diff)))
        return 0

    raise typer.Exit(_run(go))


def _decide(
    intent_id: str,
    decision: str,
    *,
    by: str | None,
    reason: str | None,
    tasks: list[str],
    llm: str | None,
    as_json: bool,
) -> int:
    from qlp.cli.views import exit_code, intent_document, print_intent
    from qlp.domain.decisions import RequestChanges, parse_decision
    from qlp.engine.wiring import continuing_llm

    chosen = parse_decision(decision, reason=reason, tasks=tasks)  # before any database
    actor = by or getpass.getuser()

    async def go(rt: Runtime) -> int:
        intent = await rt.store.find_intent(intent_id)
        rerun = isinstance(chosen, RequestChanges)
        pipeline = rt.pipeline(
            need_llm=rerun, llm=continuing_llm(rt, intent, llm) if rerun else None
        )
        decided = await pipeline.decide(intent.id, chosen, actor=actor)
        # Recorded before the (possibly long) packaging or re-run that follows.
        await audit_cli_action(
            rt, f"review.{chosen.kind}", intent.id, by=actor, tasks=list(chosen.tasks)
        )
        final = decided.intent
        if decided.next is not None:  # in this process: the CLI is its own runner
            final = await pipeline.run(intent.id)
        if as_json:
            print_json(await intent_document(rt, final))
        else:
            await print_intent(rt, final)
        return exit_code(final.status)

    return _run(go, llm)


LlmOption = Annotated[
    str | None,
    typer.Option("--llm", help="Model for re-running tasks (as for `qlp run`)."),
]


@app.command("approve", help="Approve the current round; the capsule is then built.")
@handle_errors
def review_approve(
    intent_id: IntentArg,
    reason: Annotated[str | None, typer.Option("--reason", help="Why (optional).")] = None,
    by: ByOption = None,
    as_json: JsonOption = False,
) -> None:
    raise typer.Exit(
        _decide(intent_id, "approve", by=by, reason=reason, tasks=[], llm=None, as_json=as_json)
    )


@app.command("reject", help="Reject the intent (a reason is required).")
@handle_errors
def review_reject(
    intent_id: IntentArg,
    reason: Annotated[str, typer.Option("--reason", help="Why it is rejected.")] = "",
    by: ByOption = None,
    as_json: JsonOption = False,
) -> None:
    raise typer.Exit(
        _decide(intent_id, "reject", by=by, reason=reason, tasks=[], llm=None, as_json=as_json)
    )


@app.command(
    "changes",
    help="Request changes: the named tasks (all when none) and their dependents re-run with "
    "the feedback in their prompt, then the gate runs again. Exit codes as for `qlp run`.",
)
@handle_errors
def review_changes(
    intent_id: IntentArg,
    feedback: Annotated[str, typer.Option("--feedback", help="What to change.")] = "",
    task: Annotated[
        list[str] | None, typer.Option("--task", help="A task to redo (repeatable).")
    ] = None,
    by: ByOption = None,
    llm: LlmOption = None,
    as_json: JsonOption = False,
) -> None:
    raise typer.Exit(
        _decide(
            intent_id,
            "request_changes",
            by=by,
            reason=feedback,
            tasks=task or [],
            llm=llm,
            as_json=as_json,
        )
    )
