"""Events across processes: hands this process's bus the events other processes commit.

Every statement that inserts events also NOTIFYs `qlp_events` with the intent id and the
seqs it added (store/statements.py); PostgreSQL delivers that at commit. The relay keeps
one LISTEN connection (store/notify.py). On a notice for an intent some local subscriber
follows, and that goes past what the bus has handed out (its mark), it reads the events
after the mark from the database and delivers them; the bus drops what it already sent,
so events this process committed itself (published locally, and notified as well) reach
a subscriber once. Notices arriving while a read for the intent is under way are
coalesced into one more read.

A lost connection (database restart, pg_terminate_backend) is reopened with backoff; a
NOTIFY sent meanwhile is lost, so after LISTEN is in place again every followed intent is
read on from its mark.
"""

from __future__ import annotations

import asyncio
import contextlib

import psycopg
import structlog

from qlp.engine.events import EventBus
from qlp.errors import StoreError
from qlp.store.notify import Listener, Notice, conninfo
from qlp.store.repository import Store

log = structlog.get_logger("qlp.events")

# Events read per query when filling; more are read at once after a full page.
PAGE = 1000
BACKOFF_MIN_S = 0.1
BACKOFF_MAX_S = 5.0


class EventRelay:
    def __init__(self, store: Store, bus: EventBus) -> None:
        self._store = store
        self._bus = bus
        self._dsn = conninfo(store.engine)
        self._task: asyncio.Task[None] | None = None
        self._listener: Listener | None = None
        self._filling: dict[str, asyncio.Task[None]] = {}
        # Per intent with a read wanted: the highest seq heard of (None: read anyway).
        self._wanted: dict[str, int | None] = {}
        # Where to start for an intent whose subscribers have no mark yet (a notice's first-1).
        self._hint: dict[str, int] = {}
        self.reconnects = 0

    @property
    def backend_pid(self) -> int | None:
        """The listen connection's server process (tests terminate it)."""
        return self._listener.backend_pid if self._listener is not None else None

    async def start(self) -> None:
        """Listen (the first connection is opened here, so a failure stops the start)."""
        try:
            self._listener = await Listener.open(self._dsn)
        except psycopg.Error as exc:
            raise StoreError(f"cannot listen for events: {exc}".strip()) from None
        self._bus.set_gap_filler(self.request)
        self._task = asyncio.create_task(self._run(), name="qlp-event-relay")

    async def stop(self) -> None:
        self._bus.set_gap_filler(None)
        tasks = [t for t in (self._task, *self._filling.values()) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task
        self._filling.clear()
        if self._listener is not None:
            with contextlib.suppress(Exception):
                await self._listener.close()
            self._listener = None

    # -- hearing -------------------------------------------------------------------------
    async def _run(self) -> None:
        delay = BACKOFF_MIN_S
        while True:
            listener = self._listener
            if listener is None:
                try:
                    listener = await Listener.open(self._dsn)
                except (psycopg.Error, OSError) as exc:
                    log.warning("events.listen_failed", error=str(exc), retry_in_s=delay)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, BACKOFF_MAX_S)
                    continue
                self._listener = listener
                self.reconnects += 1
                resync = self._bus.resync()
                log.info("events.listen_restored", catching_up=len(resync))
                for intent_id in resync:
                    self.request(intent_id)
            delay = BACKOFF_MIN_S
            try:
                async for notice in listener.notices():
                    self._heard(notice)
            except (psycopg.Error, OSError) as exc:
                log.warning("events.listen_lost", error=str(exc).strip())
            self._listener = None
            with contextlib.suppress(Exception):
                await listener.close()

    def _heard(self, notice: Notice) -> None:
        intent_id = notice.intent_id
        if not self._bus.follows(intent_id):
            return
        mark = self._bus.mark(intent_id)
        if mark is not None and notice.last <= mark:
            return  # this process's own commit, already published (the usual case)
        if mark is None:
            self._hint[intent_id] = min(notice.first - 1, self._hint.get(intent_id, notice.first))
        self.request(intent_id, notice.last)

    # -- reading -------------------------------------------------------------------------
    def request(self, intent_id: str, upto: int | None = None) -> None:
        """Read the intent's events after its mark (up to at least `upto`; None: whatever
        is there) and deliver them. One read at a time per intent; more requests meanwhile
        make one more read."""
        if intent_id in self._wanted:
            had = self._wanted[intent_id]
            self._wanted[intent_id] = None if had is None or upto is None else max(had, upto)
        else:
            self._wanted[intent_id] = upto
        if intent_id not in self._filling:
            self._filling[intent_id] = asyncio.create_task(self._fill(intent_id))

    async def _fill(self, intent_id: str) -> None:
        delay = BACKOFF_MIN_S
        try:
            # Let this process's own publish of a commit that was just notified land first.
            await asyncio.sleep(0)
            while intent_id in self._wanted:
                upto = self._wanted.pop(intent_id)
                if not self._bus.follows(intent_id):
                    self._hint.pop(intent_id, None)
                    return
                after = self._bus.mark(intent_id)
                if after is None:
                    after = self._hint.pop(intent_id, None)
                    if after is None:
                        continue  # nothing to read on from; its subscriber reads the backlog
                elif upto is not None and upto <= after:
                    continue
                try:
                    events = await self._store.list_events(intent_id, after, PAGE)
                except Exception as exc:  # the listener's reconnect reads on; try again too
                    log.warning("events.fill_failed", intent_id=intent_id, error=str(exc))
                    self._wanted.setdefault(intent_id, upto)
                    if self._bus.mark(intent_id) is None:
                        self._hint.setdefault(intent_id, after)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, BACKOFF_MAX_S)
                    continue
                delay = BACKOFF_MIN_S
                await self._bus.deliver(events)
                if len(events) == PAGE:
                    self._wanted.setdefault(intent_id, None)
        finally:
            self._filling.pop(intent_id, None)
