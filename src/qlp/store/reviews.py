"""Validation attempts, review rounds and decisions, and capsule rows.

Kept apart from repository.py (intents, tasks, calls, files) but sharing its event
machinery: each write commits together with the event that announces it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from sqlalchemy import Row, func, insert, select

from qlp.domain import events as ev
from qlp.domain.events import Event
from qlp.domain.findings import score_values
from qlp.errors import NotFoundError, UserInputError
from qlp.store import schema as t
from qlp.store.base import from_row
from qlp.store.repository import Store, utcnow


@dataclass(frozen=True)
class ValidationRecord:
    intent_id: str
    round: int
    task_id: str | None
    attempt: int
    digest: str
    ok: bool
    report: dict[str, Any]
    created_at: datetime


@dataclass(frozen=True)
class Decision:
    decision: str  # approve | auto_approve | reject | request_changes
    actor: str
    reason: str | None
    tasks: list[str]
    created_at: datetime

    def as_dict(self) -> dict[str, Any]:
        return {
            "decision": self.decision,
            "by": self.actor,
            "at": self.created_at.isoformat(),
            "reason": self.reason,
            "tasks": self.tasks,
        }


@dataclass(frozen=True)
class ReviewRound:
    intent_id: str
    round: int
    verdict: str
    gates: list[dict[str, Any]]
    scores: dict[str, Any]
    created_at: datetime
    decision: Decision | None


@dataclass(frozen=True)
class CapsuleRecord:
    id: str
    intent_id: str
    version: int
    parent: str | None
    size: int
    sha256: str
    uri: str
    scores: dict[str, Any]
    decision: dict[str, Any] | None
    created_at: datetime


class ReviewStore:
    def __init__(self, store: Store) -> None:
        self.store = store

    async def record_validation(
        self,
        intent_id: str,
        *,
        round_: int,
        task_id: str | None,
        attempt: int,
        digest: str,
        ok: bool,
        report: dict[str, Any],
        summary: dict[str, Any],
    ) -> Event:
        async with self.store.engine.begin() as conn:
            await conn.execute(
                insert(t.validations).values(
                    intent_id=intent_id,
                    round=round_,
                    task_id=task_id,
                    attempt=attempt,
                    digest=digest,
                    ok=ok,
                    report=report,
                    created_at=utcnow(),
                )
            )
            payload = {"task_id": task_id, "round": round_, "attempt": attempt, "ok": ok}
            events = await self.store.commit_events(
                conn, intent_id, [(ev.TASK_VALIDATED, {**payload, **summary})]
            )
        await self.store.publish(events)
        return events[0]

    async def validations(self, intent_id: str) -> list[ValidationRecord]:
        async with self.store.autocommit.connect() as conn:
            rows = await conn.execute(
                select(t.validations)
                .where(t.validations.c.intent_id == intent_id)
                .order_by(t.validations.c.id)
            )
            return [from_row(ValidationRecord, r) for r in rows]

    async def open_round(
        self,
        intent_id: str,
        *,
        verdict: str,
        gates: list[dict[str, Any]],
        scores: dict[str, Any],
    ) -> int:
        """Record the gate's outcome as the next review round; return its number."""
        async with self.store.engine.begin() as conn:
            last = (
                await conn.execute(
                    select(func.max(t.review_rounds.c.round)).where(
                        t.review_rounds.c.intent_id == intent_id
                    )
                )
            ).scalar_one()
            number = (last or 0) + 1
            await conn.execute(
                insert(t.review_rounds).values(
                    intent_id=intent_id,
                    round=number,
                    verdict=verdict,
                    gates=gates,
                    scores=scores,
                    created_at=utcnow(),
                )
            )
            events = await self.store.commit_events(
                conn,
                intent_id,
                [
                    (
                        ev.REVIEW_GATED,
                        {"round": number, "verdict": verdict, "gates": gates, "scores": scores},
                    )
                ],
            )
        await self.store.publish(events)
        return number

    async def rounds(self, intent_id: str) -> list[ReviewRound]:
        async with self.store.autocommit.connect() as conn:
            rounds = (
                await conn.execute(
                    select(t.review_rounds)
                    .where(t.review_rounds.c.intent_id == intent_id)
                    .order_by(t.review_rounds.c.round)
                )
            ).all()
            decisions = {
                r.round: Decision(
                    decision=r.decision,
                    actor=r.actor,
                    reason=r.reason,
                    tasks=list(r.tasks),
                    created_at=r.created_at,
                )
                for r in await conn.execute(
                    select(t.review_decisions).where(t.review_decisions.c.intent_id == intent_id)
                )
            }
        return [
            ReviewRound(
                intent_id=r.intent_id,
                round=r.round,
                verdict=r.verdict,
                gates=list(r.gates),
                scores=score_values(r.scores),
                created_at=r.created_at,
                decision=decisions.get(r.round),
            )
            for r in rounds
        ]

    async def current_round(self, intent_id: str) -> ReviewRound:
        rounds = await self.rounds(intent_id)
        if not rounds:
            raise NotFoundError(f"intent {intent_id} has not been through the review gate")
        return rounds[-1]

    async def decide(
        self,
        intent_id: str,
        round_: int,
        *,
        decision: str,
        actor: str,
        reason: str | None,
        tasks: list[str],
    ) -> Decision:
        now = utcnow()
        async with self.store.engine.begin() as conn:
            taken = (
                await conn.execute(
                    select(t.review_decisions.c.decision).where(
                        t.review_decisions.c.intent_id == intent_id,
                        t.review_decisions.c.round == round_,
                    )
                )
            ).scalar_one_or_none()
            if taken is not None:
                raise UserInputError(
                    f"round {round_} of intent {intent_id} was already decided ({taken})"
                )
            await conn.execute(
                insert(t.review_decisions).values(
                    intent_id=intent_id,
                    round=round_,
                    decision=decision,
                    actor=actor,
                    reason=reason,
                    tasks=tasks,
                    created_at=now,
                )
            )
            events = await self.store.commit_events(
                conn,
                intent_id,
                [
                    (
                        ev.REVIEW_DECIDED,
                        {
                            "round": round_,
                            "decision": decision,
                            "by": actor,
                            "reason": reason,
                            "tasks": tasks,
                        },
                    )
                ],
            )
        await self.store.publish(events)
        return Decision(decision=decision, actor=actor, reason=reason, tasks=tasks, created_at=now)

    # -- capsules ------------------------------------------------------------------------
    async def add_capsule(self, record: CapsuleRecord) -> Event:
        async with self.store.engine.begin() as conn:
            await conn.execute(
                insert(t.capsules).values(
                    id=record.id,
                    intent_id=record.intent_id,
                    version=record.version,
                    parent=record.parent,
                    size=record.size,
                    sha256=record.sha256,
                    uri=record.uri,
                    scores=record.scores,
                    decision=record.decision,
                    created_at=record.created_at,
                )
            )
            events = await self.store.commit_events(
                conn,
                record.intent_id,
                [
                    (
                        ev.CAPSULE_READY,
                        {
                            "capsule_id": record.id,
                            "version": record.version,
                            "parent": record.parent,
                            "sha256": record.sha256,
                            "size": record.size,
                            "uri": record.uri,
                        },
                    )
                ],
            )
        await self.store.publish(events)
        return events[0]

    async def capsules(self, intent_id: str | None = None, limit: int = 50) -> list[CapsuleRecord]:
        query = select(t.capsules).order_by(t.capsules.c.created_at.desc()).limit(limit)
        if intent_id is not None:
            query = query.where(t.capsules.c.intent_id == intent_id)
        async with self.store.autocommit.connect() as conn:
            return [capsule_record(r) for r in await conn.execute(query)]


def capsule_record(r: Row[Any]) -> CapsuleRecord:
    record = from_row(CapsuleRecord, r)
    return replace(record, scores=score_values(record.scores))
