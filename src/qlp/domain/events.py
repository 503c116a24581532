"""Events: what happened to an intent, in order. Persisted, then published."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

INTENT_QUEUED = "intent.queued"
INTENT_PLANNING = "intent.planning"
INTENT_PLANNED = "intent.planned"
INTENT_EXECUTING = "intent.executing"
INTENT_COMPLETED = "intent.completed"
INTENT_FAILED = "intent.failed"
INTENT_CANCELLED = "intent.cancelled"
INTENT_RESUMED = "intent.resumed"
PLAN_REJECTED = "plan.rejected"
TASK_STARTED = "task.started"
TASK_OUTPUT = "task.output"
TASK_SUCCEEDED = "task.succeeded"
TASK_FAILED = "task.failed"
TASK_SKIPPED = "task.skipped"
TASK_CANCELLED = "task.cancelled"
TASK_RETRY = "task.answer_rejected"
FILE_CONFLICT = "file.conflict"
CONTEXT_TRIMMED = "context.trimmed"
LLM_USAGE = "llm.usage"
LLM_RETRY = "llm.retry"
TASK_VALIDATED = "task.validated"
TASK_REPAIRING = "task.repairing"
REPAIR_LOOP = "task.repair_loop"
VALIDATION_DONE = "intent.validated"
REVIEW_GATED = "review.gated"
REVIEW_REQUIRED = "review.required"
REVIEW_DECIDED = "review.decided"
INTENT_REVIEWING = "intent.reviewing"
INTENT_PACKAGING = "intent.packaging"
INTENT_REJECTED = "intent.rejected"
CAPSULE_READY = "capsule.ready"
# What is happening now, where no other event says so (docs/ARCHITECTURE.md, "Phases"):
# task.phase {task_id, phase: "checks", attempt}, intent.phase {phase: "validating", round}.
TASK_PHASE = "task.phase"
INTENT_PHASE = "intent.phase"


@dataclass(frozen=True)
class Event:
    seq: int
    intent_id: str
    type: str
    at: datetime
    payload: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "intent_id": self.intent_id,
            "type": self.type,
            "at": self.at.isoformat(),
            "payload": self.payload,
        }
