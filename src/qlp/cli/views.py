"""How an intent is shown at the end of a command, and the exit code it means."""

from __future__ import annotations

from typing import Any

from qlp.cli import render
from qlp.cli.common import console
from qlp.domain.states import IntentStatus
from qlp.engine.wiring import Runtime
from qlp.store.base import IntentRecord
from qlp.store.reviews import ReviewStore

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_REVIEW = 3
EXIT_CANCELLED = 130


def exit_code(status: IntentStatus, cancelled: bool = False) -> int:
    if cancelled or status == IntentStatus.CANCELLED:
        return EXIT_CANCELLED
    if status == IntentStatus.REVIEWING:
        return EXIT_REVIEW
    return EXIT_OK if status == IntentStatus.COMPLETED else EXIT_FAILED


async def intent_document(rt: Runtime, intent: IntentRecord) -> dict[str, Any]:
    reviews = ReviewStore(rt.store)
    data = render.intent_json(
        intent, await rt.store.get_tasks(intent.id), await rt.store.get_files(intent.id)
    )
    data.update(
        render.quality_json(await reviews.rounds(intent.id), await reviews.capsules(intent.id))
    )
    return data


async def print_intent(rt: Runtime, intent: IntentRecord) -> None:
    reviews = ReviewStore(rt.store)
    tasks = await rt.store.get_tasks(intent.id)
    console.print(render.summary(intent, tasks, await rt.store.get_files(intent.id)))
    console.print(
        render.quality(await reviews.rounds(intent.id), await reviews.capsules(intent.id))
    )
