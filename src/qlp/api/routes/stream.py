"""GET /intents/{id}/stream (WebSocket): persisted events after `after`, then live ones.

The subscription to the bus is taken before the backlog is read, so an event committed
while the backlog is being sent is not missed; anything already sent (seq <= last) is
dropped, and a gap (two transactions publishing out of order) is filled from the database.
So a client reconnecting with the last seq it saw gets neither a gap nor a duplicate.
The bus carries the events of every process (engine/relay.py hears of the others' commits
by LISTEN/NOTIFY), already in order and once each; the checks here stay as the last word.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import OrderedDict
from datetime import UTC, datetime

from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from fastapi.exceptions import RequestValidationError

from qlp.api.context import Service, ws_service
from qlp.api.inputs import query_event_seq
from qlp.api.problems import classify, validation_detail
from qlp.api.routes.intents import visible_intent
from qlp.api.security import ws_caller
from qlp.domain import events as ev
from qlp.domain.events import Event
from qlp.errors import QLPError

router = APIRouter(tags=["intents"])

# An intent in one of these states will not emit more events until someone acts on it.
_FINAL_EVENTS = {ev.INTENT_COMPLETED, ev.INTENT_FAILED, ev.INTENT_CANCELLED, ev.INTENT_REJECTED}
# A subscriber this far behind is dropped (close 1013); it reconnects with its last seq.
MAX_BACKLOG = 10_000
# Each event is encoded once for all its subscribers (fan-out to hundreds of streams).
_ENCODED: OrderedDict[tuple[str, int], str] = OrderedDict()
_ENCODED_MAX = 4096


def _encoded(e: Event) -> str:
    key = (e.intent_id, e.seq)
    text = _ENCODED.get(key)
    if text is None:
        text = json.dumps({"event": "intent", **e.as_dict()}, separators=(",", ":"))
        _ENCODED[key] = text
        if len(_ENCODED) > _ENCODED_MAX:
            _ENCODED.popitem(last=False)
    return text


@router.websocket("/intents/{intent_id}/stream", name="intent.stream")
async def stream(websocket: WebSocket, intent_id: str) -> None:
    svc = ws_service(websocket)
    await websocket.accept()
    try:
        # Read here, not as a parameter: FastAPI would refuse a bad one before the accept,
        # with a bare 403. The rules are GET /events' (EventSeq), and so is the answer.
        after = query_event_seq("after", websocket.query_params.get("after"))
        principal = await ws_caller(websocket, svc)
        intent = await visible_intent(svc, principal, intent_id)
    except RequestValidationError as exc:
        detail, errors = validation_detail(exc)
        message = {"type": "error", "code": "validation_error", "detail": detail}
        await websocket.send_json({**message, "errors": errors})
        await websocket.close(code=4422, reason="validation_error")
        return
    except QLPError as exc:
        status, code, _ = classify(exc)
        await websocket.send_json({"type": "error", "code": code, "detail": exc.message})
        await websocket.close(code=4000 + status, reason=code)
        return
    bus = svc.runtime.bus
    queue = bus.subscribe(intent_id)
    svc.metrics.websockets.inc()
    try:
        await _follow(websocket, svc, queue, intent_id, after, intent.status.is_terminal)
    except (WebSocketDisconnect, RuntimeError):
        pass  # the client went away
    finally:
        bus.unsubscribe(queue, intent_id)
        svc.metrics.websockets.dec()


async def _follow(
    websocket: WebSocket,
    svc: Service,
    queue: asyncio.Queue[Event],
    intent_id: str,
    after: int,
    final: bool,
) -> None:
    store = svc.runtime.store
    last = after

    async def send(events: list[Event]) -> bool:
        nonlocal last
        for e in events:
            if e.seq <= last:
                continue
            if e.seq > last + 1:  # published out of order: fill from what is committed
                for missing in await store.list_events(intent_id, last, e.seq - last - 1):
                    await websocket.send_text(_encoded(missing))
                    last = missing.seq
            await websocket.send_text(_encoded(e))
            last = e.seq
            if e.type in _FINAL_EVENTS:
                return True
        return False

    backlog = await store.list_events(intent_id, after)
    ended = await send(backlog)
    # Gives the bus a point to read on from if this process's listener hears of events
    # committed elsewhere (engine/relay.py) before any reached this intent's subscribers.
    svc.runtime.bus.caught_up(intent_id, last)
    if (ended or final) and queue.empty():
        await websocket.close(code=1000)
        return
    # Reading from the client tells us at once when it disconnects.
    closed = asyncio.create_task(websocket.receive())
    try:
        while True:
            if queue.qsize() > MAX_BACKLOG:
                await websocket.close(code=1013, reason="too far behind; reconnect with after")
                return
            getting = asyncio.create_task(queue.get())
            done, _ = await asyncio.wait(
                {getting, closed},
                timeout=svc.settings.stream_heartbeat_s,
                return_when=asyncio.FIRST_COMPLETED,
            )
            batch: list[Event] = []
            if getting.done():
                batch.append(getting.result())
                while not queue.empty():
                    batch.append(queue.get_nowait())
            else:
                getting.cancel()  # an item not yet taken stays in the queue
            if closed in done:
                message = closed.result()
                if message["type"] == "websocket.disconnect":
                    return
                closed = asyncio.create_task(websocket.receive())  # client messages: ignored
            if not done:
                now = datetime.now(UTC).isoformat()
                await websocket.send_json({"event": "heartbeat", "at": now, "last_seq": last})
                continue
            if await send(batch):
                await websocket.close(code=1000)
                return
    finally:
        closed.cancel()
        with contextlib.suppress(BaseException):
            await closed
