"""The in-process event bus. Events are persisted by the store first, then published here."""

from __future__ import annotations

import asyncio

from qlp.domain.events import Event


class EventBus:
    """Fan-out of committed events to any number of subscribers (CLI, API, tests)."""

    def __init__(self) -> None:
        self._queues: set[asyncio.Queue[Event]] = set()

    def subscribe(self) -> asyncio.Queue[Event]:
        queue: asyncio.Queue[Event] = asyncio.Queue()
        self._queues.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[Event]) -> None:
        self._queues.discard(queue)

    async def publish(self, events: list[Event]) -> None:
        for queue in self._queues:
            for event in events:
                queue.put_nowait(event)
