"""Turning intents, tasks and events into terminal output (rich) or JSON."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

from rich.cells import cell_len
from rich.console import Console, ConsoleOptions, Group, RenderableType, RenderResult
from rich.table import Table
from rich.text import Text

from qlp.cli.common import clip
from qlp.cli.safetext import plain, visible
from qlp.domain import events as ev
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


def _cut(value: object, style: str = "") -> Text:
    """One line of untrusted text that is shortened with an ellipsis, never wrapped."""
    text = plain(value, style, one_line=True)
    text.no_wrap, text.overflow = True, "ellipsis"
    return text


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


def clock(secs: float) -> str:
    """Elapsed time, short: `7.2 s`, `3m05s`, `1h02m`."""
    if secs < 60:
        return f"{max(secs, 0.0):.1f} s"
    minutes, seconds = divmod(int(secs), 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


# What the events that start a phase say, in words (docs/ARCHITECTURE.md, "Phases").
PHASE_WORDS = {
    "checks": "checks in the sandbox",
    "validating": "validating the project in the sandbox (build and tests)",
}


def phase_of(event: Event) -> tuple[str | None, str] | None:
    """When `event` starts a phase: (its task id, or None for the intent; what happens now).

    Existing events mark most phases (task.started: the model call; task.repairing: a
    repair); task.phase and intent.phase mark the rest (checks, the project's validation)."""
    p = event.payload
    task = str(p["task_id"]) if p.get("task_id") else None
    match event.type:
        case ev.INTENT_PLANNING | ev.INTENT_RESUMED:
            return None, "planning: model call" if event.type == ev.INTENT_PLANNING else "resuming"
        case ev.PLAN_REJECTED:
            return None, f"planning: model call, attempt {_int(p.get('attempt')) + 1}"
        case ev.INTENT_PLANNED | ev.INTENT_EXECUTING:
            return None, "running tasks"
        case ev.TASK_STARTED if task:
            return task, "model call"
        case ev.TASK_RETRY if task:
            return task, f"model call, attempt {_int(p.get('attempt')) + 1}"
        case ev.TASK_PHASE if task:
            phase = str(p.get("phase"))
            attempt = _int(p.get("attempt"))
            after = f" after repair {attempt - 1}" if attempt > 1 else ""
            return task, f"{phase}{after}"
        case ev.TASK_REPAIRING if task:
            return task, f"repair {_int(p.get('attempt')) - 1}: model call with the failures"
        case ev.INTENT_PHASE:
            phase = str(p.get("phase"))
            return None, PHASE_WORDS.get(phase, phase)
        case ev.TASK_VALIDATED if task is None:  # the project's result: the gate decides now
            return None, "review gate"
        case ev.REVIEW_REQUIRED:
            return None, "waiting for review"
        case ev.INTENT_PACKAGING:
            return None, "packaging: building and signing the capsule"
        case ev.INTENT_COMPLETED | ev.INTENT_FAILED | ev.INTENT_CANCELLED | ev.INTENT_REJECTED:
            return None, event.type.removeprefix("intent.")
    return None


def _int(value: object) -> int:
    try:
        return int(str(value))
    except ValueError:
        return 0


class LiveView:
    """The state shown while an intent runs, updated from events; drawn at the console's
    width each time it is drawn, so its clocks move between events.

    `clock` is injected so a test can move time without waiting."""

    def __init__(self, intent_id: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.intent_id = intent_id
        self.status = IntentStatus.QUEUED.value
        self.tasks: dict[str, dict[str, Any]] = {}
        self.tokens = 0
        self.cost = 0.0
        self.cost_known = True
        self.clock = clock
        self.started = clock()
        self.last_note = ""
        # What the intent is doing now, and since when (shown before any event arrives).
        self.phase = "starting: planning …"
        self.phase_since = self.started

    def seed(self, intent: IntentRecord, tasks: list[TaskRecord]) -> None:
        self.status = intent.status.value
        self.tokens = intent.total_tokens
        self.cost = intent.cost_usd
        self.cost_known = intent.cost_known
        if intent.status != IntentStatus.QUEUED:
            self.phase = f"starting: resuming ({intent.status.value}) …"
        for t in tasks:
            self.tasks[t.id] = {
                "type": t.type.value,
                "title": t.title,
                "status": t.status.value,
                "tokens": t.input_tokens + t.output_tokens,
                "phase": "",
                "since": None,
            }

    def apply(self, event: Event) -> None:
        p = event.payload
        now = self.clock()
        if event.type.startswith("intent.") and "status" in p:
            self.status = str(p["status"])
        if event.type == "intent.planned":
            for t in p.get("tasks", []):
                self.tasks[t["id"]] = {
                    "type": t["type"],
                    "title": t["title"],
                    "status": TaskStatus.PENDING.value,
                    "tokens": 0,
                    "phase": "",
                    "since": None,
                }
        elif event.type.startswith("task.") and "task_id" in p and "status" in p:
            entry = self.tasks.get(str(p["task_id"]))
            if entry is not None:
                entry["status"] = str(p["status"])
                if event.type == ev.TASK_STARTED:
                    entry["since"] = now
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
        mark = phase_of(event)
        if mark is not None:
            task_id, what = mark
            if task_id is None:
                self.phase, self.phase_since = what, now
            elif (entry := self.tasks.get(task_id)) is not None:
                entry["phase"] = what
        self.last_note = describe(event)

    def render(self) -> RenderableType:
        """The view itself: a renderable that shows the state when it is drawn."""
        return self

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield self.frame(options.max_width)

    def frame(self, width: int) -> RenderableType:
        now = self.clock()
        running = sum(1 for t in self.tasks.values() if t["status"] == "running")
        phase = self.phase
        if phase == "running tasks":
            phase = f"running tasks: {running} running"
        now_line = _cut(f"now  {phase}  {clock(now - self.phase_since)}")
        table = Table(show_edge=False, pad_edge=False, box=None)
        table.add_column("task", no_wrap=True)
        table.add_column("type", no_wrap=True)
        table.add_column("status", no_wrap=True)
        table.add_column("tokens", justify="right", no_wrap=True)
        # Collapsible (not no_wrap): these give up width first; their cells never wrap.
        table.add_column("phase", max_width=44)
        table.add_column("title", max_width=60)
        for task_id, t in self.tasks.items():
            doing = ""
            if t["status"] == "running" and t["phase"]:
                since = t["since"]
                # The clock first: a long phase is shortened, the time stays in view.
                doing = (f"{clock(now - since)}  " if since is not None else "") + t["phase"]
            table.add_row(
                _cut(task_id),
                _cut(t["type"]),
                styled(visible(t["status"], one_line=True)),
                f"{t['tokens']:,}",
                _cut(doing, "yellow"),
                _cut(t["title"]),
            )
        return Group(self.header(width, now), now_line, table, _cut(self.last_note, "dim"))

    def header(self, width: int, now: float | None = None) -> Text:
        """The first line, fitted to `width` cells: the less important parts are dropped
        first (cost detail, tokens, cost, task count), then the intent id is shortened."""
        now = self.clock() if now is None else now
        done = sum(1 for t in self.tasks.values() if t["status"] == "succeeded")
        tasks = f"{done}/{len(self.tasks)} tasks"
        tokens = f"{self.tokens:,} tokens"
        long_cost = money(self.cost, self.cost_known)
        short_cost = f"${self.cost:.4f}" if self.cost_known else f"≥ ${self.cost:.4f}"
        optional = [
            [tasks, tokens, long_cost],
            [tasks, tokens, short_cost],
            [tasks, short_cost],
            [tasks],
            [],
        ]
        status = visible(self.status, one_line=True)
        intent_id = visible(self.intent_id, one_line=True)
        fixed = f"{status}  {clock(now - self.started)}"
        for extra in optional:
            rest = "  ".join([fixed, *extra])
            if cell_len(intent_id) + 2 + cell_len(rest) <= width:
                break
        room = max(width - 2 - cell_len(rest), 5)
        if cell_len(intent_id) > room:
            intent_id = intent_id[: room - 1] + "…"
        head = Text.assemble((intent_id, "bold"), "  ", styled(status))
        head.append(rest[len(status) :])
        head.truncate(width, overflow="ellipsis")
        return head


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
    elif event.type == ev.TASK_PHASE:
        phase = str(p.get("phase"))
        extra = f" (attempt {p.get('attempt')}): {PHASE_WORDS.get(phase, phase)}"
    elif event.type == ev.INTENT_PHASE:
        phase = str(p.get("phase"))
        extra = f" (round {p.get('round')}): {PHASE_WORDS.get(phase, phase)}"
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
