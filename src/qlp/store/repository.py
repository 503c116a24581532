"""The store: every read and write of QLP's tables, one short transaction each.

Each method that changes state commits before it returns, together with the event that
describes the change, and then hands those events to the sink (the engine's bus). So a
process that dies at any point leaves the database describing exactly what had happened.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, cast

import psycopg
from psycopg.rows import namedtuple_row
from sqlalchemy import Row, insert, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from qlp.domain import events as ev
from qlp.domain.events import Event
from qlp.domain.ids import TaskType
from qlp.domain.plan import Plan
from qlp.domain.states import (
    INTENT_TRANSITIONS,
    IntentStatus,
    TaskStatus,
    check_intent_transition,
    check_task_transition,
    sources_of,
)
from qlp.errors import NotFoundError
from qlp.llm.base import CallRecord
from qlp.store import schema as t
from qlp.store import statements as st
from qlp.store.base import (
    EventSink,
    FileRecord,
    IntentRecord,
    LLMCallRecord,
    TaskRecord,
    Totals,
    from_row,
)
from qlp.store.db import lock_key
from qlp.store.leases import Leases


def utcnow() -> datetime:
    return datetime.now(UTC)


async def _no_sink(_: list[Event]) -> None:
    return None


class Store:
    def __init__(
        self, engine: AsyncEngine, sink: EventSink | None = None, *, lease_s: float = 20.0
    ) -> None:
        self.engine = engine
        # The leases this process holds; every write of an intent is fenced by its epoch.
        self.leases = Leases(self, lease_s)
        # Reads and single-statement writes need no explicit transaction: autocommit saves
        # the BEGIN/COMMIT round trips (see statements.py).
        self.autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")
        self._sink = sink or _no_sink
        self._hot = _GroupCommit(self.autocommit)

    def set_sink(self, sink: EventSink) -> None:
        self._sink = sink

    @asynccontextmanager
    async def user_lock(self, user_id: str) -> AsyncIterator[None]:
        """Wait for, then hold, a session lock on a user's submissions: every process that
        checks a per-user cap and then submits does both under it, so two submissions (on
        any API process) cannot both pass the cap."""
        key = lock_key(f"submit:{user_id}")
        async with self.autocommit.connect() as conn:
            await conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": key})
            try:
                yield
            finally:
                await conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})

    # -- events ------------------------------------------------------------------------
    def _event_params(
        self, intent_id: str, pending: Sequence[tuple[str, dict[str, Any]]], now: datetime
    ) -> dict[str, Any]:
        return {
            "intent_id": intent_id,
            "lease": self.leases.epoch(intent_id),  # the fence (statements.py)
            "n_events": len(pending),
            "now": now,
            "events": json.dumps([{"type": ty, "payload": pl} for ty, pl in pending]),
        }

    @staticmethod
    def _events(
        intent_id: str, pending: Sequence[tuple[str, dict[str, Any]]], last_seq: int, at: datetime
    ) -> list[Event]:
        first = last_seq - len(pending) + 1
        return [
            Event(seq=first + k, intent_id=intent_id, type=ty, at=at, payload=pl)
            for k, (ty, pl) in enumerate(pending)
        ]

    async def commit_events(
        self, conn: AsyncConnection, intent_id: str, pending: Sequence[tuple[str, dict[str, Any]]]
    ) -> list[Event]:
        """Number and insert a transaction's events; the transaction's last statement."""
        now = utcnow()
        seq = (
            await conn.exec_driver_sql(
                st.APPEND_EVENTS, self._event_params(intent_id, pending, now)
            )
        ).scalar_one_or_none()
        if seq is None:
            raise self._refused(intent_id)
        return self._events(intent_id, pending, seq, now)

    def _refused(self, intent_id: str) -> Exception:
        """Why a fenced write changed nothing: the lease is gone, or the intent is."""
        if self.leases.epoch(intent_id) is not None:
            return self.leases.lost(intent_id)
        return NotFoundError(f"no intent with id {intent_id}")

    async def _locked(self, conn: AsyncConnection, intent_id: str) -> Any:
        """The intent's row, locked for the transaction, checked against this process's
        lease: the fence of writes made in a transaction of several statements."""
        row = (
            await conn.execute(
                select(t.intents.c.status, t.intents.c.started_at, t.intents.c.lease)
                .where(t.intents.c.id == intent_id)
                .with_for_update()
            )
        ).one_or_none()
        if row is None:
            raise NotFoundError(f"no intent {intent_id}")
        epoch = self.leases.epoch(intent_id)
        if epoch is not None and row.lease != epoch:
            raise self.leases.lost(intent_id)
        return row

    async def publish(self, events: list[Event]) -> None:
        if events:
            await self._sink(events)

    async def append_event(
        self, intent_id: str, type_: str, payload: dict[str, Any] | None = None
    ) -> Event:
        async with self.engine.begin() as conn:
            events = await self.commit_events(conn, intent_id, [(type_, payload or {})])
        await self.publish(events)
        return events[0]

    async def list_events(
        self, intent_id: str, after_seq: int = 0, limit: int | None = None
    ) -> list[Event]:
        async with self.autocommit.connect() as conn:
            rows = await conn.execute(
                select(t.events)
                .where(t.events.c.intent_id == intent_id, t.events.c.seq > after_seq)
                .order_by(t.events.c.seq)
                .limit(limit)
            )
            return [
                Event(seq=r.seq, intent_id=r.intent_id, type=r.type, at=r.at, payload=r.payload)
                for r in rows
            ]

    # -- intents -----------------------------------------------------------------------
    async def create_intent(
        self,
        intent_id: str,
        text: str,
        *,
        options: dict[str, Any],
        user_id: str | None,
        workspace: str,
    ) -> IntentRecord:
        now = utcnow()
        async with self.engine.begin() as conn:
            await conn.execute(
                insert(t.intents).values(
                    id=intent_id,
                    text=text,
                    options=options,
                    user_id=user_id,
                    status=IntentStatus.QUEUED.value,
                    workspace=workspace,
                    created_at=now,
                    updated_at=now,
                )
            )
            events = await self.commit_events(conn, intent_id, [(ev.INTENT_QUEUED, {"text": text})])
        await self.publish(events)
        return await self.get_intent(intent_id)

    async def set_intent_status(
        self,
        intent_id: str,
        status: IntentStatus,
        *,
        event_type: str,
        payload: dict[str, Any] | None = None,
        error: str | None = None,
        plan: Plan | None = None,
    ) -> Event:
        async with self.engine.begin() as conn:
            current = await self._locked(conn, intent_id)
            check_intent_transition(IntentStatus(current.status), status, intent_id)
            now = utcnow()
            values: dict[str, Any] = {"status": status.value, "updated_at": now, "error": error}
            if current.started_at is None and status != IntentStatus.QUEUED:
                values["started_at"] = now
            values["finished_at"] = now if status.is_terminal else None
            if plan is not None:
                values["plan"] = plan.model_dump(mode="json")
            await conn.execute(update(t.intents).where(t.intents.c.id == intent_id).values(values))
            body = {"status": status.value, **({"error": error} if error else {})}
            events = await self.commit_events(
                conn, intent_id, [(event_type, {**body, **(payload or {})})]
            )
        await self.publish(events)
        return events[0]

    async def move_workspace(self, intent_id: str, workspace: str) -> None:
        """Records where the intent's workspace now is (the host that works on it last);
        informational: its files are rebuilt from the blob store wherever it runs."""
        async with self.autocommit.connect() as conn:
            await conn.execute(
                update(t.intents).where(t.intents.c.id == intent_id).values(workspace=workspace)
            )

    async def get_intent(self, intent_id: str) -> IntentRecord:
        async with self.autocommit.connect() as conn:
            row = (
                await conn.execute(select(t.intents).where(t.intents.c.id == intent_id))
            ).one_or_none()
        if row is None:
            raise NotFoundError(f"no intent with id {intent_id}")
        return _intent(row)

    async def find_intent(self, prefix: str) -> IntentRecord:
        """An intent by its full id or an unambiguous prefix (as `git` does for commits)."""
        async with self.autocommit.connect() as conn:
            rows = (
                await conn.execute(
                    select(t.intents)
                    .where(t.intents.c.id.startswith(prefix, autoescape=True))
                    .limit(2)
                )
            ).all()
        if not rows:
            raise NotFoundError(f"no intent with id {prefix}")
        if len(rows) > 1:
            raise NotFoundError(f"{prefix} matches more than one intent; give more characters")
        return _intent(rows[0])

    async def list_intents(
        self, *, limit: int = 20, status: IntentStatus | None = None
    ) -> list[IntentRecord]:
        query = select(t.intents).order_by(t.intents.c.created_at.desc()).limit(limit)
        if status is not None:
            query = query.where(t.intents.c.status == status.value)
        async with self.autocommit.connect() as conn:
            return [_intent(r) for r in await conn.execute(query)]

    # -- plan and tasks ----------------------------------------------------------------
    async def save_plan(self, intent_id: str, plan: Plan, order: Sequence[str]) -> Event:
        """Store the plan and its tasks (pending) and move the intent to executing."""
        position = {task_id: i for i, task_id in enumerate(order)}
        planned = {
            "tasks": [
                {
                    "id": x.id,
                    "type": x.type.value,
                    "title": x.title,
                    "dependencies": x.dependencies,
                }
                for x in sorted(plan.tasks, key=lambda x: position[x.id])
            ],
            "summary": plan.summary,
            "status": IntentStatus.EXECUTING.value,
        }
        pending = [(ev.INTENT_PLANNED, planned)]
        now = utcnow()
        # The usual case in one statement (one round trip); anything unusual (a refused
        # transition, tasks already there) takes the transaction below, which says why.
        row = await self._hot.run(
            st.SAVE_PLAN,
            {
                **self._event_params(intent_id, pending, now),
                "allowed": sorted(
                    s.value
                    for s, targets in INTENT_TRANSITIONS.items()
                    if IntentStatus.EXECUTING in targets
                ),
                "status": TaskStatus.PENDING.value,
                "intent_status": IntentStatus.EXECUTING.value,
                "plan": json.dumps(plan.model_dump(mode="json")),
                "tasks": json.dumps(
                    [
                        {
                            "id": task.id,
                            "type": task.type.value,
                            "title": task.title,
                            "description": task.description,
                            "dependencies": task.dependencies,
                            "priority": task.priority,
                            "acceptance_criteria": task.acceptance_criteria,
                            "position": position[task.id],
                        }
                        for task in plan.tasks
                    ]
                ),
            },
        )
        if row is not None and row.ok:
            events = self._events(intent_id, pending, row.event_seq, now)
            await self.publish(events)
            return events[0]
        return await self._replace_plan(intent_id, plan, position, planned)

    async def _replace_plan(
        self, intent_id: str, plan: Plan, position: dict[str, int], planned: dict[str, Any]
    ) -> Event:
        async with self.engine.begin() as conn:
            status = (await self._locked(conn, intent_id)).status
            check_intent_transition(IntentStatus(status), IntentStatus.EXECUTING)
            await conn.execute(t.tasks.delete().where(t.tasks.c.intent_id == intent_id))
            await conn.execute(
                insert(t.tasks),
                [
                    {
                        "intent_id": intent_id,
                        "id": task.id,
                        "type": task.type.value,
                        "title": task.title,
                        "description": task.description,
                        "dependencies": task.dependencies,
                        "priority": task.priority,
                        "acceptance_criteria": task.acceptance_criteria,
                        "position": position[task.id],
                        "status": TaskStatus.PENDING.value,
                    }
                    for task in plan.tasks
                ],
            )
            await conn.execute(
                update(t.intents)
                .where(t.intents.c.id == intent_id)
                .values(
                    plan=plan.model_dump(mode="json"),
                    status=IntentStatus.EXECUTING.value,
                    updated_at=utcnow(),
                )
            )
            events = await self.commit_events(conn, intent_id, [(ev.INTENT_PLANNED, planned)])
        await self.publish(events)
        return events[0]

    async def get_tasks(self, intent_id: str) -> list[TaskRecord]:
        async with self.autocommit.connect() as conn:
            rows = await conn.execute(
                select(t.tasks).where(t.tasks.c.intent_id == intent_id).order_by(t.tasks.c.position)
            )
            return [_task(r) for r in rows]

    async def set_task_status(
        self,
        intent_id: str,
        task_id: str,
        status: TaskStatus,
        *,
        event_type: str,
        payload: dict[str, Any] | None = None,
        error: str | None = None,
        notes: str | None = None,
    ) -> Event:
        events = await self._move_tasks(
            intent_id, [task_id], status, event_type, payload or {}, error=error, notes=notes
        )
        return events[-1]

    async def set_tasks_status(
        self,
        intent_id: str,
        task_ids: Iterable[str],
        status: TaskStatus,
        *,
        event_type: str,
        error: str | None = None,
        payload: dict[str, Any] | None = None,
    ) -> list[Event]:
        ids = sorted(set(task_ids))
        if not ids:
            return []
        return await self._move_tasks(
            intent_id, ids, status, event_type, payload or {}, error=error
        )

    async def _move_tasks(
        self,
        intent_id: str,
        task_ids: list[str],
        status: TaskStatus,
        event_type: str,
        payload: dict[str, Any],
        *,
        error: str | None = None,
        notes: str | None = None,
        before: Sequence[tuple[str, dict[str, Any]]] = (),
        files: Sequence[dict[str, Any]] = (),
    ) -> list[Event]:
        """Move tasks to `status` (all or none), with their files and events, in ONE statement."""
        pending = list(before)
        for task_id in task_ids:
            body: dict[str, Any] = {"task_id": task_id, "status": status.value}
            if error:
                body["error"] = error
            pending.append((event_type, {**body, **payload}))
        if status == TaskStatus.RUNNING:
            clock = "start"
        elif status == TaskStatus.PENDING:
            clock = "reset"
        else:
            clock = "finish"
        now = utcnow()
        params = {
            **self._event_params(intent_id, pending, now),
            "n_tasks": len(task_ids),
            "ids": task_ids,
            "allowed": sorted(s.value for s in sources_of(status)),
            "status": status.value,
            "error": error,
            "notes": notes,
            "attempt_inc": 1 if status == TaskStatus.RUNNING else 0,
            "clock": clock,
            "files": json.dumps(list(files)),
        }
        row = await self._hot.run(st.MOVE_TASKS, params)
        if row is None or not row.held:
            raise self._refused(intent_id)
        if not row.ok:
            async with self.autocommit.connect() as conn:
                await self._explain_refused_move(conn, intent_id, task_ids, status)
        events = self._events(intent_id, pending, row.event_seq, now)
        await self.publish(events)
        return events

    async def _explain_refused_move(
        self, conn: AsyncConnection, intent_id: str, task_ids: list[str], status: TaskStatus
    ) -> None:
        rows = await conn.execute(
            select(t.tasks.c.id, t.tasks.c.status).where(
                t.tasks.c.intent_id == intent_id, t.tasks.c.id.in_(task_ids)
            )
        )
        found = {r.id: TaskStatus(r.status) for r in rows}
        for task_id in task_ids:
            if task_id not in found:
                raise NotFoundError(f"intent {intent_id} has no task {task_id}")
            check_task_transition(found[task_id], status)
        raise NotFoundError(f"intent {intent_id}: tasks changed while being moved")

    # -- LLM calls ---------------------------------------------------------------------
    async def record_llm_call(
        self, intent_id: str, task_id: str | None, record: CallRecord
    ) -> Totals:
        """Keep the call in the transcript and add it to the intent's totals."""
        response = record.response
        usage_in = response.usage.input_tokens if response else 0
        usage_out = response.usage.output_tokens if response else 0
        cost = response.cost_usd if response else 0.0
        usage = {
            "task_id": task_id,
            "purpose": record.request.purpose,
            "model": record.model,
            "input_tokens": usage_in,
            "output_tokens": usage_out,
            "cost_usd": cost,
            "ok": record.error is None,
        }
        now = utcnow()
        pending = [(ev.LLM_USAGE, usage)]
        params = {
            **self._event_params(intent_id, pending, now),
            "task_id": task_id,
            "purpose": record.request.purpose[:80],
            "provider": record.provider,
            "model": record.model,
            "request": json.dumps(record.request.as_dict()),
            "response": response.content if response else None,
            "error": record.error,
            "in_tok": usage_in,
            "out_tok": usage_out,
            "cost": None if cost is None else Decimal(str(cost)),
            "latency_ms": record.latency_s * 1000.0,
            "attempts": response.attempts if response else 1,
        }
        row = await self._hot.run(st.RECORD_CALL, params)
        if row is None:
            raise self._refused(intent_id)
        await self.publish(self._events(intent_id, pending, row.event_seq, now))
        return Totals(
            input_tokens=row.input_tokens,
            output_tokens=row.output_tokens,
            cost_usd=float(row.cost_usd),
            unpriced_calls=row.unpriced_calls,
            llm_calls=row.llm_calls,
        )

    async def list_llm_calls(self, intent_id: str) -> list[LLMCallRecord]:
        async with self.autocommit.connect() as conn:
            rows = await conn.execute(
                select(t.llm_calls)
                .where(t.llm_calls.c.intent_id == intent_id)
                .order_by(t.llm_calls.c.id)
            )
            return [
                LLMCallRecord(
                    id=r.id,
                    intent_id=r.intent_id,
                    task_id=r.task_id,
                    purpose=r.purpose,
                    provider=r.provider,
                    model=r.model,
                    request=r.request,
                    response=r.response,
                    error=r.error,
                    input_tokens=r.input_tokens,
                    output_tokens=r.output_tokens,
                    cost_usd=None if r.cost_usd is None else float(r.cost_usd),
                    latency_ms=r.latency_ms,
                    attempts=r.attempts,
                    created_at=r.created_at,
                )
                for r in rows
            ]

    # -- workspace files ---------------------------------------------------------------
    async def get_files(self, intent_id: str) -> dict[str, FileRecord]:
        async with self.autocommit.connect() as conn:
            rows = await conn.execute(
                select(t.files).where(t.files.c.intent_id == intent_id).order_by(t.files.c.path)
            )
            return {r.path: from_row(FileRecord, r) for r in rows}

    async def record_task_output(
        self,
        intent_id: str,
        task_id: str,
        written: Sequence[tuple[str, str, int]],
        conflicts: Sequence[dict[str, Any]],
        notes: str,
    ) -> list[Event]:
        """Record the files a task wrote, the conflicts it met, and mark it succeeded."""
        before = [(ev.FILE_CONFLICT, dict(c)) for c in conflicts]
        before.append(
            (
                ev.TASK_OUTPUT,
                {"task_id": task_id, "files": [p for p, _, _ in written], "notes": notes},
            )
        )
        return await self._move_tasks(
            intent_id,
            [task_id],
            TaskStatus.SUCCEEDED,
            ev.TASK_SUCCEEDED,
            {"files": len(written)},
            notes=notes,
            before=before,
            files=[
                {"path": p, "sha256": sha, "size": size, "task_id": task_id}
                for p, sha, size in written
            ],
        )


_Pending = tuple[str, dict[str, Any], "asyncio.Future[Any]"]


class _GroupCommit:
    """Runs the hot-path statements, committing those that arrive together in ONE transaction.

    When a wave of tasks finishes at once, each task's statement used to be its own commit:
    every one took the intents row lock (event counter, totals) and held it through its own
    WAL flush, so they went one after another, each also costing the busy event loop a few
    turns. Here a single flusher takes everything queued while the previous batch was being
    committed and sends it as one transaction in one round trip (psycopg pipeline mode):
    one row lock, one WAL flush. A lone statement is sent at once, in autocommit. Callers
    still return only after their statement is committed; statements commit in the order
    they were queued.

    If a statement of a batch fails, the batch is rolled back and its statements are run
    again one by one, so the error reaches its own caller only and the others still commit.
    Rows come back as named tuples (the statements' column names).
    """

    def __init__(self, autocommit: AsyncEngine) -> None:
        self._autocommit = autocommit
        self._queue: list[_Pending] = []
        self._flusher: asyncio.Task[None] | None = None

    async def run(self, sql: str, params: dict[str, Any]) -> Any:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._queue.append((sql, params, future))
        flusher = self._flusher
        if flusher is None or flusher.done() or flusher.get_loop() is not loop:
            self._flusher = loop.create_task(self._flush())
        # A cancelled caller does not cancel the batch: its statement may still commit,
        # exactly as a statement already sent to the server would have.
        return await asyncio.shield(future)

    async def _flush(self) -> None:
        batch: list[_Pending] = []
        try:
            while self._queue:
                batch, self._queue = self._queue, []
                async with self._autocommit.connect() as conn:
                    raw = await conn.get_raw_connection()
                    pg = cast("psycopg.AsyncConnection[Any]", raw.driver_connection)
                    if len(batch) > 1:
                        try:
                            rows = await _in_one_transaction(pg, batch)
                        except psycopg.OperationalError as exc:
                            # The connection broke: the commit may or may not have happened,
                            # so the statements must not be run a second time.
                            await conn.invalidate()
                            _fail(batch, exc)
                            continue
                        except psycopg.Error:
                            pass  # one statement failed: the others must still commit
                        else:
                            for (_, _, future), row in zip(batch, rows, strict=True):
                                if not future.done():
                                    future.set_result(row)
                            continue
                    for sql, params, future in batch:
                        try:
                            cur = await pg.cursor(row_factory=namedtuple_row).execute(sql, params)
                            row = await cur.fetchone()
                        except psycopg.Error as exc:
                            if not future.done():
                                future.set_exception(exc)
                        else:
                            if not future.done():
                                future.set_result(row)
        except BaseException as exc:
            _fail([*batch, *self._queue], exc)
            self._queue = []
            raise


async def _in_one_transaction(pg: psycopg.AsyncConnection[Any], batch: list[_Pending]) -> list[Any]:
    cursors = []
    async with pg.pipeline(), pg.transaction():
        for sql, params, _ in batch:
            cur = pg.cursor(row_factory=namedtuple_row)
            await cur.execute(sql, params)
            cursors.append(cur)
    return [await cur.fetchone() for cur in cursors]


def _fail(batch: Sequence[_Pending], exc: BaseException) -> None:
    for _, _, future in batch:
        if not future.done():
            future.set_exception(exc)


def _intent(r: Row[Any]) -> IntentRecord:
    return IntentRecord(
        id=r.id,
        text=r.text,
        options=r.options,
        user_id=r.user_id,
        status=IntentStatus(r.status),
        plan=r.plan,
        error=r.error,
        workspace=r.workspace,
        created_at=r.created_at,
        started_at=r.started_at,
        finished_at=r.finished_at,
        updated_at=r.updated_at,
        input_tokens=r.input_tokens,
        output_tokens=r.output_tokens,
        cost_usd=float(r.cost_usd),
        unpriced_calls=r.unpriced_calls,
        llm_calls=r.llm_calls,
    )


def _task(r: Row[Any]) -> TaskRecord:
    return TaskRecord(
        intent_id=r.intent_id,
        id=r.id,
        type=TaskType(r.type),
        title=r.title,
        description=r.description,
        dependencies=list(r.dependencies),
        priority=r.priority,
        acceptance_criteria=list(r.acceptance_criteria),
        position=r.position,
        status=TaskStatus(r.status),
        attempts=r.attempts,
        started_at=r.started_at,
        finished_at=r.finished_at,
        error=r.error,
        notes=r.notes,
        input_tokens=r.input_tokens,
        output_tokens=r.output_tokens,
    )
