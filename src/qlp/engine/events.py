"""The in-process event bus. Events are persisted by the store first, then published here.

Events reach it from two sources: this process's own commits (`publish`, from the store)
and, in an API process, the commits of other processes (`deliver`, from engine/relay.py,
which hears of them by LISTEN/NOTIFY and reads them from the database). So that a
subscriber of one intent gets every event once and in order whatever the source, the bus
keeps, per followed intent, the last seq it handed out: older events are dropped (already
sent), the next one is sent, and one after a gap is held back while the gap-filler (the
relay) reads the missing ones from the database. Seqs of an intent are numbered under its
row lock, so when seq n is committed every seq below n is committed too: reading from the
database after the mark always gives a whole, ordered run.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Callable, Iterable

from qlp.domain.events import Event

# Called with an intent id when its subscribers miss events the bus has not seen.
GapFiller = Callable[[str], None]


class EventBus:
    """Fan-out of committed events to any number of subscribers (CLI, API, tests).

    A subscriber follows every intent or, for a WebSocket stream, one intent: publishing then
    costs one queue put per interested subscriber, not one per connection. Subscribers of
    every intent (metrics, the CLI's live view) see this process's own events only."""

    def __init__(self) -> None:
        self._all: set[asyncio.Queue[Event]] = set()
        self._by_intent: defaultdict[str, set[asyncio.Queue[Event]]] = defaultdict(set)
        # Per followed intent: the highest seq every one of its subscribers has (sent by
        # the bus, or read by the subscriber itself, see `caught_up`).
        self._mark: dict[str, int] = {}
        self._fill: GapFiller | None = None
        # Intents whose subscribers may have missed events the bus never heard of (the
        # relay's connection was lost) and that have no mark to read on from yet.
        self._stale: set[str] = set()

    def set_gap_filler(self, fill: GapFiller | None) -> None:
        """Without one (the CLI), an event after a gap is sent at once, as it comes."""
        self._fill = fill

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
                self._mark.pop(intent_id, None)
                self._stale.discard(intent_id)

    @property
    def subscribers(self) -> int:
        return len(self._all) + sum(len(q) for q in self._by_intent.values())

    def follows(self, intent_id: str) -> bool:
        """True when some subscriber follows this intent."""
        return intent_id in self._by_intent

    def followed(self) -> list[str]:
        return list(self._by_intent)

    def mark(self, intent_id: str) -> int | None:
        """The last seq of a followed intent its subscribers have; None when not known yet."""
        return self._mark.get(intent_id)

    def caught_up(self, intent_id: str, seq: int) -> None:
        """A subscriber has read the intent's events up to `seq` from the database itself.

        It gives a followed intent with no mark yet one to read on from: a later event
        after a gap is then filled from there, not sent with the gap."""
        if intent_id not in self._by_intent:
            return
        if intent_id not in self._mark:
            self._mark[intent_id] = seq
        if intent_id in self._stale:
            self._stale.discard(intent_id)
            if self._fill is not None:
                self._fill(intent_id)

    def resync(self) -> list[str]:
        """Every followed intent may have missed events (the relay was deaf for a while):
        returns those with a mark, to be read on from it; the others are filled once their
        subscriber says where it is (`caught_up`)."""
        marked = [i for i in self._by_intent if i in self._mark]
        self._stale.update(i for i in self._by_intent if i not in self._mark)
        return marked

    async def publish(self, events: list[Event]) -> None:
        """Events this process committed."""
        for event in events:
            for queue in self._all:
                queue.put_nowait(event)
        self._to_followers(events)

    async def deliver(self, events: list[Event]) -> None:
        """Events read from the database (committed by any process): followers only."""
        self._to_followers(events)

    def _to_followers(self, events: Iterable[Event]) -> None:
        by_intent = self._by_intent
        if not by_intent:
            return
        for event in sorted(events, key=lambda e: e.seq):
            queues = by_intent.get(event.intent_id)
            if not queues:
                continue
            intent_id = event.intent_id
            last = self._mark.get(intent_id)
            if last is not None and event.seq <= last:
                continue  # already sent (or read by every subscriber)
            if last is not None and event.seq > last + 1 and self._fill is not None:
                self._fill(intent_id)  # the filler reads from `last`, this one included
                continue
            self._mark[intent_id] = event.seq
            for queue in queues:
                queue.put_nowait(event)
