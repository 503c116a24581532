"""The in-process event bus. Events are persisted by the store first, then published here."""

from __future__ import annotations

import asyncio
from collections import defaultdict

from qlp.domain.events import Event


class EventBus:
    """Fan-out of committed events to any number of subscribers (CLI, API, tests).

    A subscriber follows every intent or, for a WebSocket stream, one intent: publishing then
    costs one queue put per interested subscriber, not one per connection."""

    def __init__(self) -> None:
        self._all: set[asyncio.Queue[Event]] = set()
        self._by_intent: defaultdict[str, set[asyncio.Queue[Event]]] = defaultdict(set)

    def subscribe(self, intent_id: str | None = None) -> asyncio.Queue[Event]:
        queue: asyncio.Queue[Event] = asyncio.Queue()
        if intent_id is None:
            self._all.add(queue)
        else:
            self._by_intent[intent_id].add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[Event], intent_id: str | None = None) -> None:
        if intent_id is None:
            self._all.discard(queue)
            return
        queues = self._by_intent.get(intent_id)
        if queues is not None:
            queues.discard(queue)
            if not queues:
                del self._by_intent[intent_id]

    @property
    def subscribers(self) -> int:
        return len(self._all) + sum(len(q) for q in self._by_intent.values())

    async def publish(self, events: list[Event]) -> None:
        for event in events:
            for queue in self._all:
                queue.put_nowait(event)
            for queue in self._by_intent.get(event.intent_id, ()):
                queue.put_nowait(event)
