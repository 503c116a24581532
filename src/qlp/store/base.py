"""What the store hands back: plain records, independent of SQLAlchemy.

There is one database dialect (PostgreSQL), so the repository in `repository.py` is the
store; these records are what the engine and the faces see of it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any, TypeVar

from qlp.domain.events import Event
from qlp.domain.ids import TaskType
from qlp.domain.states import IntentStatus, TaskStatus

R = TypeVar("R")


def from_row(record: type[R], row: Any) -> R:
    """A record dataclass filled from the row's columns of the same names."""
    return record(**{f.name: getattr(row, f.name) for f in fields(record)})  # type: ignore[arg-type]


# Called with the events of a transaction once it has committed.
EventSink = Callable[[list[Event]], Awaitable[None]]


@dataclass(frozen=True)
class IntentRecord:
    id: str
    text: str
    options: dict[str, Any]
    user_id: str | None
    status: IntentStatus
    plan: dict[str, Any] | None
    error: str | None
    workspace: str
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    updated_at: datetime
    input_tokens: int
    output_tokens: int
    cost_usd: float
    unpriced_calls: int
    llm_calls: int

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    @property
    def cost_known(self) -> bool:
        return self.unpriced_calls == 0


@dataclass(frozen=True)
class TaskRecord:
    intent_id: str
    id: str
    type: TaskType
    title: str
    description: str
    dependencies: list[str]
    priority: int
    acceptance_criteria: list[str]
    position: int
    status: TaskStatus
    attempts: int
    started_at: datetime | None
    finished_at: datetime | None
    error: str | None
    notes: str | None
    input_tokens: int
    output_tokens: int


@dataclass(frozen=True)
class FileRecord:
    path: str
    sha256: str
    size: int
    task_id: str
    updated_at: datetime


@dataclass(frozen=True)
class LLMCallRecord:
    id: int
    intent_id: str
    task_id: str | None
    purpose: str
    provider: str
    model: str
    request: dict[str, Any]
    response: str | None
    error: str | None
    input_tokens: int
    output_tokens: int
    cost_usd: float | None
    latency_ms: float
    attempts: int
    created_at: datetime


@dataclass
class Totals:
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    unpriced_calls: int = 0
    llm_calls: int = 0

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens


# -- identity (store/users.py) -------------------------------------------------------------
@dataclass(frozen=True)
class UserRecord:
    id: str
    username: str
    # argon2id hash (PHC string); never shown, never logged.
    password_hash: str = field(repr=False)
    role: str  # admin | member | viewer (qlp.auth.base.Role)
    created_at: datetime
    disabled: bool


@dataclass(frozen=True)
class SessionRecord:
    """One refresh token of a login's chain (`family_id` is the login's first session)."""

    id: str
    user_id: str
    family_id: str
    token_hash: str = field(repr=False)
    created_at: datetime
    expires_at: datetime
    rotated_at: datetime | None
    revoked_at: datetime | None
    revoked_reason: str | None
    client_ip: str | None
    user_agent: str | None


@dataclass(frozen=True)
class ApiKeyRecord:
    id: str
    user_id: str
    name: str
    prefix: str  # the key's first characters, enough to recognise it in a listing
    key_hash: str = field(repr=False)
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None
