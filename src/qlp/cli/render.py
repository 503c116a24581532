"""Turning intents, tasks and events into terminal output (rich) or JSON."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from qlp.cli.common import clip
from qlp.cli.safetext import plain, visible
from qlp.domain.events import Event
from qlp.domain.states import IntentStatus, TaskStatus
from qlp.store.base import FileRecord, IntentRecord, TaskRecord
from qlp.store.reviews import CapsuleRecord, ReviewRound

STATUS_STYLE = {
    "pending": "dim",
    "queued": "dim",
    "running": "yellow",
    "planning": "yellow",
    "executing": "yellow",
    "reviewing": "magenta",
    "packaging": "yellow",
    "succeeded": "green",
    "completed": "green",
    "failed": "red",
    "rejected": "red",
    "skipped": "bright_black",
    "cancelled": "bright_black",
}


def styled(status: str) -> Text:
    return Text(status, style=STATUS_STYLE.get(status, ""))


def money(cost: float, known: bool) -> str:
    return f"${cost:.4f}" if known else f"≥ ${cost:.4f} (some prices unknown)"


def elapsed(intent: IntentRecord) -> float | None:
    if intent.started_at is None:
        return None
    end = intent.finished_at or intent.updated_at
    return (end - intent.started_at).total_seconds()


def intent_json(
    intent: IntentRecord, tasks: list[TaskRecord], files: dict[str, FileRecord]
) -> dict[str, Any]:
    return {
        "intent_id": intent.id,
        "text": intent.text,
        "status": intent.status.value,
        "error": intent.error,
        "workspace": intent.workspace,
        "created_at": intent.created_at.isoformat(),
        "elapsed_s": elapsed(intent),
        "tokens": {
            "input": intent.input_tokens,
            "output": intent.output_tokens,
            "total": intent.total_tokens,
        },
        "cost_usd": intent.cost_usd if intent.cost_known else None,
        "cost_usd_known_part": intent.cost_usd,
        "llm_calls": intent.llm_calls,
        "tasks": [
            {
                "id": t.id,
                "type": t.type.value,
                "title": t.title,
                "status": t.status.value,
                "dependencies": t.dependencies,
                "attempts": t.attempts,
                "error": t.error,
                "tokens": t.input_tokens + t.output_tokens,
            }
            for t in tasks
        ],
        "files": [
            {"path": f.path, "sha256": f.sha256, "size": f.size, "task_id": f.task_id}
            for f in files.values()
        ],
    }


def _task_table(rows: Iterable[tuple[str, str, str, int, str]]) -> Table:
    """Rows of (id, type, status, tokens, title)."""
    table = Table(show_edge=False, pad_edge=False, box=None)
    table.add_column("task", no_wrap=True)
    table.add_column("type")
    table.add_column("status")
    table.add_column("tokens", justify="right")
    table.add_column("title", **clip(60))
    for task_id, type_, status, tokens, title in rows:
        table.add_row(
            plain(task_id, one_line=True),
            plain(type_, one_line=True),
            styled(visible(status, one_line=True)),
            f"{tokens:,}",
            plain(title, one_line=True),
        )
    return table


def tasks_table(tasks: list[TaskRecord]) -> Table:
    return _task_table(
        (t.id, t.type.value, t.status.value, t.input_tokens + t.output_tokens, t.title)
        for t in tasks
    )


def summary(
    intent: IntentRecord, tasks: list[TaskRecord], files: dict[str, FileRecord]
) -> RenderableType:
    counts: dict[str, int] = {}
    for t in tasks:
        counts[t.status.value] = counts.get(t.status.value, 0) + 1
    task_line = ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "none"
    secs = elapsed(intent)
    lines = [
        Text.assemble("intent    ", (intent.id, "bold"), "  ", styled(intent.status.value)),
        Text(f"tasks     {len(tasks)} ({task_line})"),
        Text(f"files     {len(files)} ({sum(f.size for f in files.values()):,} bytes)"),
        Text(
            f"tokens    {intent.total_tokens:,} "
            f"({intent.input_tokens:,} in, {intent.output_tokens:,} out, "
            f"{intent.llm_calls} calls)"
        ),
        Text(f"cost      {money(intent.cost_usd, intent.cost_known)}"),
        Text(f"time      {secs:.1f} s" if secs is not None else "time      -"),
        Text.assemble("workspace ", plain(intent.workspace)),
    ]
    if intent.error:
        lines.append(Text.assemble("error     ", plain(intent.error, "red")))
    return Group(*lines)


class LiveView:
    """The state shown while an intent runs, updated from events alone."""

    def __init__(self, intent_id: str) -> None:
        self.intent_id = intent_id
        self.status = IntentStatus.QUEUED.value
        self.tasks: dict[str, dict[str, Any]] = {}
        self.tokens = 0
        self.cost = 0.0
        self.cost_known = True
        self.started = time.monotonic()
        self.last_note = ""

    def seed(self, intent: IntentRecord, tasks: list[TaskRecord]) -> None:
        self.status = intent.status.value
        self.tokens = intent.total_tokens
        self.cost = intent.cost_usd
        self.cost_known = intent.cost_known
        for t in tasks:
            self.tasks[t.id] = {
                "type": t.type.value,
                "title": t.title,
                "status": t.status.value,
                "tokens": t.input_tokens + t.output_tokens,
            }

    def apply(self, event: Event) -> None:
        p = event.payload
        if event.type.startswith("intent.") and "status" in p:
            self.status = str(p["status"])
        if event.type == "intent.planned":
            for t in p.get("tasks", []):
                self.tasks[t["id"]] = {
                    "type": t["type"],
                    "title": t["title"],
                    "status": TaskStatus.PENDING.value,
                    "tokens": 0,
                }
        elif event.type.startswith("task.") and "task_id" in p and "status" in p:
            entry = self.tasks.get(str(p["task_id"]))
            if entry is not None:
                entry["status"] = str(p["status"])
        elif event.type == "llm.usage":
            used = int(p.get("input_tokens", 0)) + int(p.get("output_tokens", 0))
            self.tokens += used
            if p.get("cost_usd") is None:
                self.cost_known = False
            else:
                self.cost += float(p["cost_usd"])
            entry = self.tasks.get(str(p.get("task_id")))
            if entry is not None:
                entry["tokens"] += used
        self.last_note = describe(event)

    def render(self) -> RenderableType:
        table = _task_table(
            (task_id, t["type"], t["status"], t["tokens"], t["title"])
            for task_id, t in self.tasks.items()
        )
        done = sum(1 for t in self.tasks.values() if t["status"] in ("succeeded",))
        head = Text.assemble(
            (self.intent_id, "bold"),
            "  ",
            styled(self.status),
            f"  {done}/{len(self.tasks)} tasks  {self.tokens:,} tokens  "
            f"{money(self.cost, self.cost_known)}  {time.monotonic() - self.started:.1f} s",
        )
        return Group(head, table, Text(self.last_note, style="dim"))


def describe(event: Event) -> str:
    """One human line per event (used when the output is not a terminal)."""
    p = event.payload
    task = f" {p['task_id']}" if p.get("task_id") else ""
    extra = ""
    if p.get("error"):
        extra = f": {p['error']}"
    elif p.get("problem"):
        extra = f" (attempt {p.get('attempt')}): {p['problem']}"
    elif event.type == "intent.planned":
        extra = f": {len(p.get('tasks', []))} tasks"
    elif event.type == "task.output":
        extra = f": {len(p.get('files', []))} files"
    elif event.type == "file.conflict":
        extra = f": {p.get('path')} kept from {p.get('kept')}, {p.get('discarded')} discarded"
    elif event.type == "llm.usage":
        extra = f": {p.get('input_tokens', 0)}+{p.get('output_tokens', 0)} tokens"
    elif event.type == "task.validated":
        tests = p.get("tests") or {}
        extra = (
            f" (attempt {p.get('attempt')}): {'ok' if p.get('ok') else 'failures'}; "
            f"tests {tests.get('passed', 0)} passed, {tests.get('failed', 0)} failed; "
            f"{p.get('high_findings', 0)} high findings; overall "
            f"{_score((p.get('scores') or {}).get('overall'))}"
        )
    elif event.type in ("task.repairing", "task.repair_loop"):
        extra = f" (attempt {p.get('attempt')}): {p.get('detail') or 'fixing failures'}"
    elif event.type == "review.gated":
        failed = [g["name"] for g in p.get("gates", []) if not g.get("passed")]
        extra = f" round {p.get('round')}: " + (
            "all gates pass" if not failed else "failing: " + ", ".join(failed)
        )
    elif event.type == "review.decided":
        extra = f" round {p.get('round')}: {p.get('decision')} by {p.get('by')}"
    elif event.type == "capsule.ready":
        extra = f": {p.get('capsule_id')} v{p.get('version')}"
    # Payloads hold model, tool and user text: shown with its control characters escaped,
    # and printed as plain text (never markup) by every caller.
    return visible(f"[{event.seq:>4}] {event.type}{task}{extra}", one_line=True)


def _score(value: object) -> str:
    return "n/a" if value is None else str(value)


def quality(rounds: list[ReviewRound], capsules: list[CapsuleRecord]) -> RenderableType:
    """Scores, gates, decision and capsule of the latest review round."""
    if not rounds:
        return Text("")
    last = rounds[-1]
    scores = "  ".join(f"{k} {_score(v)}" for k, v in sorted(last.scores.items()))
    # The state is in words as well as colour (piped, NO_COLOR, colour-blind readers).
    gates = Text("gates     ")
    for i, g in enumerate(last.gates):
        gates.append(", " if i else "")
        gates.append_text(plain(g["name"], one_line=True))
        gates.append(
            " passed" if g["passed"] else " FAILED", style="green" if g["passed"] else "bold red"
        )
    lines = [plain(f"scores    {scores}"), gates]
    for g in last.gates:
        if not g["passed"]:
            lines.append(plain(f"          {g['name']} FAILED: {g['detail']}", "red"))
    if last.decision is not None:
        d = last.decision
        why = f" ({d.reason})" if d.reason else ""
        lines.append(plain(f"decision  round {last.round}: {d.decision} by {d.actor}{why}"))
    if capsules:
        c = max(capsules, key=lambda c: c.version)
        lines.append(plain(f"capsule   {c.id} v{c.version}  {c.uri}"))
    return Group(*lines)


def quality_json(rounds: list[ReviewRound], capsules: list[CapsuleRecord]) -> dict[str, Any]:
    last = rounds[-1] if rounds else None
    return {
        "review": None
        if last is None
        else {
            "round": last.round,
            "verdict": last.verdict,
            "gates": last.gates,
            "scores": last.scores,
            "decision": last.decision.as_dict() if last.decision else None,
        },
        "capsules": [
            {
                "id": c.id,
                "version": c.version,
                "parent": c.parent,
                "sha256": c.sha256,
                "size": c.size,
                "uri": c.uri,
            }
            for c in sorted(capsules, key=lambda c: c.version)
        ],
    }
