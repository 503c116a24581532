"""Helpers for writing scripted-model scenarios against the real pipeline."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qlp.config import Settings
from qlp.domain.events import Event
from qlp.engine.wiring import Runtime, open_runtime
from qlp.store.base import IntentRecord, TaskRecord
from tests.fakes.llm_server import FakeLLMServer

PLAN_WHEN = "Plan the following request"
TYPE_OF = {"DEV": "codegen", "TST": "test", "DOC": "doc", "INF": "infra", "ANA": "analyze"}


def task_when(task_id: str) -> str:
    """The substring that identifies the prompt of one task (used as a script `when`)."""
    return f"Your task: {task_id} "


def plan_task(task_id: str, deps: Sequence[str] = (), **extra: Any) -> dict[str, Any]:
    return {
        "id": task_id,
        "type": TYPE_OF[task_id.split("-")[1]],
        "title": extra.pop("title", f"work of {task_id}"),
        "description": extra.pop("description", f"Do the work of {task_id}."),
        "dependencies": list(deps),
        **extra,
    }


def plan_answer(tasks: Iterable[dict[str, Any]], summary: str = "test plan") -> str:
    return json.dumps({"summary": summary, "tasks": list(tasks)})


def files_answer(files: Mapping[str, str], notes: str = "done") -> str:
    return json.dumps(
        {"files": [{"path": p, "content": c} for p, c in files.items()], "notes": notes}
    )


def dag_script(deps: Mapping[str, Sequence[str]], *, delay_s: float = 0.0) -> list[dict[str, Any]]:
    """A plan with the given dependency graph and one single-file answer per task."""
    entries: list[dict[str, Any]] = [
        {"when": PLAN_WHEN, "content": plan_answer(plan_task(t, d) for t, d in deps.items())}
    ]
    for t in deps:
        entry: dict[str, Any] = {
            "when": task_when(t),
            "content": files_answer({f"out/{t}.txt": f"content of {t}\n"}),
        }
        if delay_s:
            entry["delay_s"] = delay_s
        entries.append(entry)
    return entries


def make_settings(home: Path, db_url: str, server: FakeLLMServer, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "home": home,
        "database_url": db_url,
        "llm_provider": "openai",
        "llm_model": "gpt-4o-mini",
        "llm_base_url": server.base_url,
        "openai_api_key": "test-key",
        "llm_retry_base_s": 0.01,
        "llm_retry_max_s": 2.0,
        "llm_timeout_s": 10.0,
        "validation_enabled": False,
    }
    if overrides.get("llm_provider") == "anthropic":
        values.update(anthropic_api_key="test-key", llm_base_url=server.anthropic_base_url)
    values.update(overrides)
    return Settings(**values)


@dataclass
class Outcome:
    intent: IntentRecord
    tasks: dict[str, TaskRecord]
    events: list[Event]

    def order_of(self, event_type: str) -> list[str]:
        return [str(e.payload["task_id"]) for e in self.events if e.type == event_type]

    def max_running(self) -> int:
        running, peak = 0, 0
        for e in self.events:
            if e.type == "task.started":
                running += 1
                peak = max(peak, running)
            elif e.type in ("task.succeeded", "task.failed", "task.cancelled"):
                running -= 1
        return peak


@asynccontextmanager
async def scenario(
    home: Path, db_url: str, script: Any, *, latency_s: float = 0.0, **overrides: Any
) -> AsyncIterator[tuple[Runtime, FakeLLMServer]]:
    with FakeLLMServer(script, latency_s=latency_s) as server:
        async with open_runtime(make_settings(home, db_url, server, **overrides)) as rt:
            yield rt, server


async def run_intent(rt: Runtime, text: str = "build the thing") -> Outcome:
    pipeline = rt.pipeline()
    intent = await pipeline.submit(text)
    final = await pipeline.run(intent.id)
    return await outcome(rt, final.id)


async def outcome(rt: Runtime, intent_id: str) -> Outcome:
    intent = await rt.store.get_intent(intent_id)
    tasks = {t.id: t for t in await rt.store.get_tasks(intent_id)}
    return Outcome(intent, tasks, await rt.store.list_events(intent_id))
