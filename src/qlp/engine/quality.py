"""After the agents: validation in the sandbox, the repair loop, the review gate, packaging.

`Quality` is what the pipeline calls; it owns no state of its own beyond its settings. Every
validation attempt, gate outcome, decision and capsule is committed with its event.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final
from xml.etree import ElementTree

from defusedxml.ElementTree import fromstring as safe_fromstring

from qlp.capsule.base import CapsuleInputs, CapsuleStore, ModelUse, ReviewDecision, Totals
from qlp.capsule.builder import build_capsule
from qlp.domain import events as ev
from qlp.domain.plan import Plan, transitive_dependents
from qlp.domain.states import IntentStatus, TaskStatus
from qlp.errors import UserInputError
from qlp.review.gate import GateInput, GateOutcome, Policy, Verdict, evaluate
from qlp.sandbox.base import Sandbox
from qlp.scratch import process_folder
from qlp.store.base import IntentRecord
from qlp.store.repository import Store
from qlp.store.reviews import CapsuleRecord, Decision, ReviewStore
from qlp.validation import ValidationConfig, ValidationReport, validate

# Left out of capsules: caches a run may leave behind in the workspace.
CAPSULE_EXCLUDE = ("__pycache__", "*.pyc", ".pytest_cache", ".coverage", ".ruff_cache")


@dataclass(frozen=True)
class CapsuleIdentity:
    """What a rebuilt capsule takes from the original instead of from this run."""

    intent_id: str
    version: int
    parent: str | None
    decision: ReviewDecision
    out_path: Path


@dataclass(frozen=True)
class QualityConfig:
    sandbox: Sandbox
    validation: ValidationConfig
    max_repairs: int
    policy: Policy
    threshold: int
    capsule_store: CapsuleStore
    signing_key: Any  # Ed25519PrivateKey; loaded lazily by wiring
    capsules_tmp: Path


def reproducible_junit(xml: str | None) -> str | None:
    """JUnit XML without its clock readings (`time`, `timestamp`), so that the same test
    results give the same capsule bytes."""
    if not xml:
        return xml
    root = safe_fromstring(xml)
    for element in root.iter():
        for attr in ("time", "timestamp"):
            element.attrib.pop(attr, None)
    body: str = ElementTree.tostring(root, encoding="unicode")
    return '<?xml version="1.0" encoding="utf-8"?>' + body


def gate_input(report: ValidationReport, required: Collection[str]) -> GateInput:
    return GateInput(
        syntax_ok=report.syntax_ok,
        tests_ok=report.tests_ok,
        high_findings=len(report.high_findings),
        overall_score=report.scores.overall,
        not_run_required=tuple(report.blocking(required)),
    )


def report_summary(report: ValidationReport) -> dict[str, Any]:
    return {
        "syntax_ok": report.syntax_ok,
        "tests_ok": report.tests_ok,
        "tests": {"passed": report.tests.passed, "failed": report.tests.failed},
        "high_findings": len(report.high_findings),
        "findings": len(report.findings),
        "scores": report.scores.to_dict(),
        "not_run": list(report.not_run),
        "failures": len(report.failures()),
    }


Reask = Callable[[str], Awaitable[list[str]]]


def rerun_set(deps: Mapping[str, Sequence[str]], named: Collection[str]) -> list[str]:
    """The named tasks and everything that depends on them."""
    out = set(named)
    for task_id in named:
        out |= transitive_dependents(deps, task_id)
    return sorted(out)


class Quality:
    def __init__(
        self, store: Store, config: QualityConfig, *, replay: CapsuleIdentity | None = None
    ) -> None:
        self.store = store
        self.reviews = ReviewStore(store)
        self.config = config
        # `qlp replay`: the capsule is built under the original's identity, to a file. Chosen
        # when the object is made (Runtime.pipeline(replay=...)), never switched on later.
        self.replay: Final[CapsuleIdentity | None] = replay

    async def pending_feedback(self, intent_id: str, plan: Plan) -> dict[str, str]:
        """Feedback of the last round when a person asked for changes, per task to redo."""
        rounds = await self.reviews.rounds(intent_id)
        last = rounds[-1].decision if rounds else None
        if last is None or last.decision != "request_changes" or not last.reason:
            return {}
        deps = {t.id: t.dependencies for t in plan.tasks}
        named = last.tasks or list(deps)
        return dict.fromkeys(rerun_set(deps, named), last.reason)

    async def next_round(self, intent_id: str) -> int:
        rounds = await self.reviews.rounds(intent_id)
        return (rounds[-1].round if rounds else 0) + 1

    async def _validate(
        self, workspace: Path, only_files: Collection[str] | None
    ) -> ValidationReport:
        async with self.config.sandbox.session(workspace) as session:
            return await validate(
                session, workspace, config=self.config.validation, only_files=only_files
            )

    # -- per task: validate, repair, stop on a loop ------------------------------------------
    async def check_task(
        self,
        intent_id: str,
        task_id: str,
        workspace: Path,
        files: list[str],
        reask: Reask,
        lock: asyncio.Lock,
    ) -> ValidationReport:
        """Validate the task's files (tests over the whole project); on failure give the agent
        the failures and try again, at most `max_repairs` times, stopping early when an
        attempt fails exactly as the one before."""
        round_ = await self.next_round(intent_id)
        previous: str | None = None
        attempt = 1
        mine = set(files)
        while True:
            # Checks can take many seconds (the sandbox runs the tests): say they started.
            await self.store.append_event(
                intent_id,
                ev.TASK_PHASE,
                {"task_id": task_id, "phase": "checks", "attempt": attempt},
            )
            async with lock:  # the tree must not change under a running check
                report = await self._validate(workspace, sorted(mine))
            digest = report.failure_digest()
            failures = report.failures()
            await self.reviews.record_validation(
                intent_id,
                round_=round_,
                task_id=task_id,
                attempt=attempt,
                digest=digest,
                ok=not failures,
                report=report.to_dict(),
                summary=report_summary(report),
            )
            if not failures:
                return report
            if previous == digest:
                await self.store.append_event(
                    intent_id,
                    ev.REPAIR_LOOP,
                    {
                        "task_id": task_id,
                        "attempt": attempt,
                        "detail": "the repair produced the same failures as the attempt "
                        "before; stopped repairing",
                    },
                )
                return report
            if attempt > self.config.max_repairs:
                return report
            previous = digest
            await self.store.append_event(
                intent_id,
                ev.TASK_REPAIRING,
                {"task_id": task_id, "attempt": attempt + 1, "failures": len(failures)},
            )
            mine.update(await reask(report.repair_brief(sorted(mine))))
            attempt += 1

    # -- per intent: full validation and the gate --------------------------------------------
    async def gate(self, intent: IntentRecord) -> tuple[int, GateOutcome, ValidationReport]:
        round_ = await self.next_round(intent.id)
        # The sandboxed build and test run of the whole project, often the longest wait.
        await self.store.append_event(
            intent.id, ev.INTENT_PHASE, {"phase": "validating", "round": round_}
        )
        report = await self._validate(Path(intent.workspace), None)
        await self.reviews.record_validation(
            intent.id,
            round_=round_,
            task_id=None,
            attempt=1,
            digest=report.failure_digest(),
            ok=not report.failures(),
            # The project's report keeps its SARIF and JUnit too: a capsule built later (after
            # a person approves, in another process) needs them.
            report={**report.to_dict(), "sarif": report.sarif(), "junit_xml": report.junit_xml()},
            summary=report_summary(report),
        )
        outcome = evaluate(
            gate_input(report, self.config.validation.required_checks),
            policy=self.config.policy,
            threshold=self.config.threshold,
        )
        await self.reviews.open_round(
            intent.id,
            verdict=outcome.verdict.value,
            gates=[g.as_dict() for g in outcome.gates],
            scores=report.scores.to_dict(),
        )
        return round_, outcome, report

    async def after_tasks(self, intent: IntentRecord) -> IntentStatus:
        """Gate the finished project: approve and package it, or wait for a person."""
        round_, outcome, report = await self.gate(intent)
        if self.replay is not None:
            # Rebuilding a capsule: the decision is the one the capsule records.
            d = self.replay.decision
            decision = await self.reviews.decide(
                intent.id, round_, decision=d.decision, actor=d.by, reason=d.reason, tasks=[]
            )
            await self.package(intent, report, decision)
            return IntentStatus.COMPLETED
        if outcome.verdict == Verdict.APPROVE:
            decision = await self.reviews.decide(
                intent.id,
                round_,
                decision="auto_approve",
                actor="gate",
                reason="every gate passed under policy auto",
                tasks=[],
            )
            await self.package(intent, report, decision)
            return IntentStatus.COMPLETED
        failed = [g.name for g in outcome.failed]
        await self.store.set_intent_status(
            intent.id,
            IntentStatus.REVIEWING,
            event_type=ev.REVIEW_REQUIRED,
            payload={"round": round_, "failed_gates": failed, "policy": self.config.policy.value},
        )
        return IntentStatus.REVIEWING

    async def latest_report(self, intent_id: str) -> dict[str, Any]:
        project = [v for v in await self.reviews.validations(intent_id) if v.task_id is None]
        return project[-1].report if project else {}

    async def resume_packaging(self, intent: IntentRecord) -> None:
        current = await self.reviews.current_round(intent.id)
        if current.decision is None:
            raise UserInputError(f"intent {intent.id} is packaging but its round is undecided")
        await self.package(intent, await self.latest_report(intent.id), current.decision)

    # -- packaging -----------------------------------------------------------------------------
    async def package(
        self,
        intent: IntentRecord,
        report: ValidationReport | dict[str, Any],
        decision: Decision,
        *,
        final: bool = True,
    ) -> CapsuleRecord:
        """Build, sign and store the capsule, then its row (a failed insert removes the
        object, so no row ever points at nothing). `final` completes the intent."""
        if final:
            await self.store.set_intent_status(
                intent.id, IntentStatus.PACKAGING, event_type=ev.INTENT_PACKAGING
            )
        record = await self._build_and_store(intent, report, decision)
        if final:
            await self.store.set_intent_status(
                intent.id,
                IntentStatus.COMPLETED,
                event_type=ev.INTENT_COMPLETED,
                payload={"capsule_id": record.id, "version": record.version},
            )
        return record

    async def _build_and_store(
        self, intent: IntentRecord, report: ValidationReport | dict[str, Any], decision: Decision
    ) -> CapsuleRecord:
        existing = await self.reviews.capsules(intent.id)
        version = max((c.version for c in existing), default=0) + 1
        parent = max(existing, key=lambda c: c.version).id if existing else None
        decided = ReviewDecision(
            decision=decision.decision,
            by=decision.actor,
            at=decision.created_at.astimezone(UTC).isoformat().replace("+00:00", "Z"),
            reason=decision.reason or "",
        )
        identity = self.replay
        if identity is not None:
            version, parent, decided = identity.version, identity.parent, identity.decision
        rounds = await self.reviews.rounds(intent.id)
        current = rounds[-1]
        validation: dict[str, Any]
        sarif: dict[str, Any] | None
        junit: str | None
        if isinstance(report, ValidationReport):
            validation, sarif, junit = report.to_dict(), report.sarif(), report.junit_xml()
        else:
            extra = ("sarif", "junit_xml")
            validation = {k: v for k, v in report.items() if k not in extra}
            sarif, junit = report.get("sarif"), report.get("junit_xml")
        tasks = await self.store.get_tasks(intent.id)
        calls = await self.store.list_llm_calls(intent.id)
        latest = await self.store.get_intent(intent.id)
        inputs = CapsuleInputs(
            intent_id=identity.intent_id if identity else intent.id,
            intent_text=intent.text,
            project_dir=Path(intent.workspace),
            version=version,
            parent=parent,
            plan=intent.plan or {},
            models=sorted({ModelUse(c.provider, c.model) for c in calls}, key=str),
            totals=Totals(
                input_tokens=latest.input_tokens,
                output_tokens=latest.output_tokens,
                cost_usd=latest.cost_usd if latest.llm_calls > latest.unpriced_calls else None,
                unpriced_calls=latest.unpriced_calls,
            ),
            scores=current.scores,
            gates=current.gates,
            decision=decided,
            tasks=[
                {
                    "id": t.id,
                    "type": t.type.value,
                    "title": t.title,
                    "description": t.description,
                    "dependencies": t.dependencies,
                    "acceptance_criteria": t.acceptance_criteria,
                    "status": t.status.value,
                    "attempts": t.attempts,
                    "notes": t.notes,
                }
                for t in tasks
                if t.status == TaskStatus.SUCCEEDED
            ],
            validation=validation,
            sarif=sarif,
            junit_xml=reproducible_junit(junit),
            transcript=[
                {
                    "purpose": c.purpose,
                    "task_id": c.task_id,
                    "provider": c.provider,
                    "model": c.model,
                    "request": c.request,
                    "response": c.response,
                    "error": c.error,
                    "usage": {"input_tokens": c.input_tokens, "output_tokens": c.output_tokens},
                    "cost_usd": c.cost_usd,
                }
                # Tasks run concurrently: order the transcript by purpose, then by call.
                for c in sorted(calls, key=lambda c: (c.purpose, c.id))
            ],
            exclude=CAPSULE_EXCLUDE,
        )
        if identity is not None:
            built = await asyncio.to_thread(
                build_capsule, inputs, identity.out_path, self.config.signing_key
            )
            return CapsuleRecord(
                id=built.capsule_id,
                intent_id=intent.id,
                version=version,
                parent=parent,
                size=built.size,
                sha256=built.sha256,
                uri=identity.out_path.as_uri(),
                scores=dict(current.scores),
                decision=decision.as_dict(),
                created_at=datetime.now(UTC),
            )
        scratch = await asyncio.to_thread(process_folder, self.config.capsules_tmp)
        with tempfile.TemporaryDirectory(dir=scratch) as tmp:
            out = Path(tmp) / f"{intent.id}-v{version}.qlcapsule"
            built = await asyncio.to_thread(build_capsule, inputs, out, self.config.signing_key)
            uri = await asyncio.to_thread(
                self.config.capsule_store.put, built.capsule_id, version, built.path
            )
        record = CapsuleRecord(
            id=built.capsule_id,
            intent_id=intent.id,
            version=version,
            parent=parent,
            size=built.size,
            sha256=built.sha256,
            uri=uri,
            scores=dict(current.scores),
            decision=decision.as_dict(),
            created_at=datetime.now(UTC),
        )
        try:
            await self.reviews.add_capsule(record)
        except BaseException:
            await asyncio.to_thread(self.config.capsule_store.delete, uri)
            raise
        return record
