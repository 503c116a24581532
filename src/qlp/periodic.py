"""Background work on a timer, and stopping a background task: one piece of code for the
API's periodic chores (counter pruning, refusal counts) and the job sweeper."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import structlog

log = structlog.get_logger("qlp.periodic")


async def every(
    seconds: float, work: Callable[[], Awaitable[object]], *, at_once: bool = False
) -> None:
    """Run `work` every `seconds` (first right away if `at_once`), until cancelled. A
    failure is logged and the next round tries again."""
    if not at_once:
        await asyncio.sleep(seconds)
    while True:
        try:
            await work()
        except Exception:
            log.exception("periodic.failed", work=getattr(work, "__qualname__", str(work)))
        await asyncio.sleep(seconds)


async def cancelled(task: asyncio.Task[None]) -> None:
    """Cancel the task and wait until it has stopped, whatever it ended with."""
    task.cancel()
    with contextlib.suppress(BaseException):
        await task
