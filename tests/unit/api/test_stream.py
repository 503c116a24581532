"""The stream's ordering rules, with the race made deterministic: events that arrive both in
the backlog and live are sent once, and a gap in the live events is filled from the store.
(The HTTP tests run the same code against a real server, where the race is rare.)"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

from qlp.api.routes.stream import _follow
from qlp.domain.events import Event
from qlp.engine.events import EventBus

INTENT = "QLI-01J00000000000000000000000"


def _event(seq: int, kind: str = "task.started") -> Event:
    return Event(seq=seq, intent_id=INTENT, type=kind, at=datetime.now(UTC), payload={})


class _Store:
    """Committed events, as `Store.list_events` returns them. The first read (the backlog)
    sees only the first `backlog` of them; the rest commit while it is being sent."""

    def __init__(self, events: list[Event], backlog: int | None = None) -> None:
        self.events = events
        self.visible = len(events) if backlog is None else backlog

    async def list_events(
        self, intent_id: str, after_seq: int = 0, limit: int | None = None
    ) -> list[Event]:
        found = [e for e in self.events[: self.visible] if e.seq > after_seq]
        self.visible = len(self.events)
        return found[:limit] if limit is not None else found


class _Socket:
    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []
        self.closed: int | None = None

    async def send_text(self, text: str) -> None:
        self.sent.append(json.loads(text))

    async def send_json(self, data: dict[str, Any]) -> None:
        self.sent.append(data)

    async def receive(self) -> dict[str, Any]:
        await asyncio.Event().wait()  # the client never speaks
        return {}

    async def close(self, code: int = 1000, reason: str = "") -> None:
        self.closed = code


def _service(store: _Store) -> Any:
    return SimpleNamespace(
        runtime=SimpleNamespace(store=store, bus=EventBus()),
        settings=SimpleNamespace(stream_heartbeat_s=5),
    )


async def test_events_in_backlog_and_live_are_sent_once_and_gaps_filled() -> None:
    committed = [_event(n) for n in range(1, 7)] + [_event(7, "intent.completed")]
    store = _Store(committed, backlog=3)  # the backlog read sees 1-3
    queue: asyncio.Queue[Event] = asyncio.Queue()
    # Published while the backlog was read (2, 3 again), then live, with 5 and 6 out of
    # order behind 7 (two transactions published in the other order).
    for e in (committed[1], committed[2], committed[3], committed[6]):
        queue.put_nowait(e)
    socket = _Socket()
    await asyncio.wait_for(
        _follow(socket, _service(store), queue, INTENT, 0, False),  # type: ignore[arg-type]
        timeout=5,
    )
    seqs = [m["seq"] for m in socket.sent if m.get("event") == "intent"]
    assert seqs == [1, 2, 3, 4, 5, 6, 7]
    assert socket.closed == 1000


async def test_reconnect_after_seq_skips_what_was_seen() -> None:
    committed = [_event(n) for n in range(1, 4)] + [_event(4, "intent.failed")]
    socket = _Socket()
    queue: asyncio.Queue[Event] = asyncio.Queue()
    await asyncio.wait_for(
        _follow(socket, _service(_Store(committed)), queue, INTENT, 2, True),  # type: ignore[arg-type]
        timeout=5,
    )
    assert [m["seq"] for m in socket.sent] == [3, 4]
    assert socket.closed == 1000
