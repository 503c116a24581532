"""The bus hands a followed intent's events out once each and in order, whichever source
(this process's publish, the relay's delivery) brings them first; a gap waits for the
filler; subscribers of every intent see this process's own events only."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from qlp.domain.events import Event
from qlp.engine.events import EventBus

AT = datetime(2026, 1, 1, tzinfo=UTC)


def _e(seq: int, intent_id: str = "QLI-A") -> Event:
    return Event(seq=seq, intent_id=intent_id, type="t", at=AT, payload={})


def _drain(queue: asyncio.Queue[Event]) -> list[int]:
    out = []
    while not queue.empty():
        out.append(queue.get_nowait().seq)
    return out


async def test_duplicates_from_two_sources_are_dropped_and_gaps_wait_for_the_filler() -> None:
    bus = EventBus()
    asked: list[str] = []
    bus.set_gap_filler(asked.append)
    queue = bus.subscribe("QLI-A")
    bus.caught_up("QLI-A", 2)
    await bus.publish([_e(2), _e(3)])  # 2 was in the subscriber's backlog
    await bus.deliver([_e(3), _e(4)])  # the relay read 3 as well
    assert _drain(queue) == [3, 4]
    await bus.publish([_e(6)])  # 5 was committed by another process
    assert _drain(queue) == [] and asked == ["QLI-A"]
    await bus.deliver([_e(5), _e(6)])  # what the filler reads from the mark
    await bus.publish([_e(6)])
    assert _drain(queue) == [5, 6]
    assert bus.mark("QLI-A") == 6


async def test_without_a_filler_an_event_after_a_gap_is_sent_as_it_comes() -> None:
    bus = EventBus()
    queue = bus.subscribe("QLI-A")
    for seq in (1, 3, 2):  # 2 after 3 is old news: the stream route fills such gaps itself
        await bus.publish([_e(seq)])
    assert _drain(queue) == [1, 3]
    await bus.publish([_e(5), _e(4)])  # one batch is put in order
    assert _drain(queue) == [4, 5]


async def test_remote_events_reach_followers_only_and_marks_go_with_the_last_subscriber() -> None:
    bus = EventBus()
    everything = bus.subscribe()
    queue = bus.subscribe("QLI-A")
    await bus.deliver([_e(1), _e(1, "QLI-B")])
    await bus.publish([_e(2)])
    assert _drain(queue) == [1, 2]
    assert _drain(everything) == [2]
    assert not bus.follows("QLI-B")
    bus.unsubscribe(queue, "QLI-A")
    assert bus.mark("QLI-A") is None and not bus.follows("QLI-A")


async def test_after_a_deaf_spell_marked_intents_are_read_on_and_unmarked_ones_once_caught_up() -> (
    None
):
    bus = EventBus()
    asked: list[str] = []
    bus.set_gap_filler(asked.append)
    bus.subscribe("QLI-A")
    bus.subscribe("QLI-B")
    await bus.publish([_e(4, "QLI-A")])
    assert bus.resync() == ["QLI-A"]
    assert asked == []
    bus.caught_up("QLI-B", 7)  # the stream read its backlog: now B can be read on from 7
    assert asked == ["QLI-B"] and bus.mark("QLI-B") == 7
