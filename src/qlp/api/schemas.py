"""Request and response bodies of the HTTP API (they make the OpenAPI schema at /docs)."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from qlp.api.inputs import Text, storable
from qlp.engine.pipeline import MAX_INTENT_CHARS

MAX_OPTIONS_BYTES = 16 * 1024


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FromRecord(BaseModel):
    """Built from a store record's attributes (`Model.model_validate(record)`)."""

    model_config = ConfigDict(from_attributes=True)


# -- auth -----------------------------------------------------------------------------------
class LoginIn(Strict):
    username: Text = Field(min_length=1, max_length=64)
    password: Text = Field(min_length=1, max_length=1024)


class RefreshIn(Strict):
    refresh_token: Text = Field(min_length=1, max_length=512)


class TokenOut(BaseModel):
    access_token: str
    refresh_token: str
    token_type: str = "bearer"  # noqa: S105 (the OAuth token type, not a secret)
    expires_in: int


class MeOut(BaseModel):
    id: str
    username: str
    role: str
    via: Literal["token", "api_key"]


class ApiKeyIn(Strict):
    name: Text = Field(min_length=1, max_length=100)


class ApiKeyOut(FromRecord):
    id: str
    name: str
    prefix: str
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


class ApiKeyCreatedOut(ApiKeyOut):
    key: str = Field(description="The key itself. Shown this once; only its hash is kept.")


# -- intents --------------------------------------------------------------------------------
RESERVED_OPTION_PREFIX = "qlp."


class IntentIn(Strict):
    text: Text = Field(min_length=1, max_length=MAX_INTENT_CHARS)
    options: dict[str, Any] = Field(
        default_factory=dict,
        description="Labels kept with the intent and shown back (at most 16 KiB as JSON).",
    )

    @field_validator("text")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("the intent must say what to build")
        return value

    @field_validator("options")
    @classmethod
    def _small(cls, value: dict[str, Any]) -> dict[str, Any]:
        encoded = storable(json.dumps(value, ensure_ascii=False))
        if len(encoded.encode()) > MAX_OPTIONS_BYTES:
            raise ValueError(f"options are larger than {MAX_OPTIONS_BYTES} bytes as JSON")
        if "\\u0000" in encoded:  # JSON escapes NUL; PostgreSQL's JSONB refuses it
            raise ValueError("options may not hold NUL characters")
        reserved = sorted(k for k in value if k.startswith(RESERVED_OPTION_PREFIX))
        if reserved:
            # QLP's own (e.g. qlp.llm, the model an intent continues with): not a client's.
            raise ValueError(f"option keys starting with 'qlp.' are QLP's own: {reserved}")
        return value


class TaskOut(BaseModel):
    id: str
    type: str
    title: str
    status: str
    dependencies: list[str]
    attempts: int
    started_at: datetime | None
    finished_at: datetime | None
    error: str | None
    input_tokens: int
    output_tokens: int


class IntentSummary(BaseModel):
    id: str
    text: str
    status: str
    user_id: str | None
    options: dict[str, Any]
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None
    error: str | None
    input_tokens: int
    output_tokens: int
    cost_usd: float
    cost_complete: bool = Field(description="False when some calls had no known price.")


class IntentDetail(IntentSummary):
    started_at: datetime | None
    llm_calls: int
    plan_summary: str | None
    tasks: list[TaskOut]
    scores: dict[str, int | None] | None = Field(
        description="Latest review round's scores, 0-100; null = not applicable (n/a)."
    )
    review: dict[str, Any] | None
    capsules: list[str]


class IntentPage(BaseModel):
    items: list[IntentSummary]
    next_cursor: str | None


class ReviewIn(Strict):
    decision: Literal["approve", "reject", "request_changes"]
    reason: Text | None = Field(default=None, max_length=10_000)
    tasks: list[Text] = Field(default_factory=list, max_length=500)


class FileOut(FromRecord):
    path: str
    size: int
    sha256: str
    task_id: str


class EventOut(BaseModel):
    seq: int
    intent_id: str
    type: str
    at: datetime
    payload: dict[str, Any]


# -- capsules -------------------------------------------------------------------------------
class CapsuleOut(FromRecord):
    id: str
    intent_id: str
    version: int
    parent: str | None
    size: int
    sha256: str
    scores: dict[str, int | None] = Field(description="0-100; null = not applicable (n/a).")
    decision: dict[str, Any] | None
    created_at: datetime


class CapsulePage(BaseModel):
    items: list[CapsuleOut]
    next_cursor: str | None


class PublicKeyOut(BaseModel):
    key: str = Field(description="ed25519:<base64>, as `qlp keys show` prints it")
    pem: str


# -- system ---------------------------------------------------------------------------------
class HealthOut(BaseModel):
    status: Literal["ok"]


class ReadyOut(BaseModel):
    status: Literal["ready", "not_ready"]
    checks: dict[str, str]


class AuditOut(FromRecord):
    seq: int
    at: datetime
    actor: str
    action: str
    resource: str | None
    outcome: str
    status_code: int | None
    client_ip: str | None
    user_agent: str | None
    request_id: str | None
    details: dict[str, Any]
    hash: str


class FieldError(BaseModel):
    field: str
    message: str


class ProblemOut(BaseModel):
    """RFC 9457 problem details, as every error is answered."""

    type: str
    title: str
    status: int
    detail: str
    instance: str
    code: str
    request_id: str | None
    errors: list[FieldError] | None = None
