"""The LLM port: one request/response shape for every provider.

Adapters (`openai_compat.py`, `anthropic_provider.py`, `scripted.py`) implement `LLMClient`.
`recording.py` wraps any client so every call (and every failed call) is reported to a
`CallObserver`: that is how the transcript reaches the store without adapters knowing of it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

Role = Literal["system", "user", "assistant"]


@dataclass(frozen=True)
class Message:
    role: Role
    content: str

    def as_dict(self) -> dict[str, str]:
        return {"role": self.role, "content": self.content}


@dataclass(frozen=True)
class LLMRequest:
    messages: tuple[Message, ...]
    max_tokens: int = 4096
    temperature: float = 0.2
    json_mode: bool = True
    # What the call is for, e.g. "plan" or "task:QL-DEV-001"; recorded with the call.
    purpose: str = ""

    @property
    def last_user_message(self) -> str:
        for m in reversed(self.messages):
            if m.role == "user":
                return m.content
        return ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "messages": [m.as_dict() for m in self.messages],
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "json_mode": self.json_mode,
            "purpose": self.purpose,
        }


@dataclass(frozen=True)
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0

    @property
    def total(self) -> int:
        return self.input_tokens + self.output_tokens


@dataclass(frozen=True)
class LLMResponse:
    content: str
    provider: str
    model: str
    usage: Usage
    # None means the price of this model is unknown (never silently 0).
    cost_usd: float | None
    latency_s: float
    attempts: int = 1
    finish_reason: str | None = None
    raw: dict[str, Any] = field(default_factory=dict)


class LLMClient(Protocol):
    """A chat model. `complete` retries transient failures itself and raises LLMError."""

    @property
    def provider(self) -> str: ...

    @property
    def model(self) -> str: ...

    async def complete(self, request: LLMRequest) -> LLMResponse: ...

    async def aclose(self) -> None: ...


@runtime_checkable
class PerIntent(Protocol):
    """A client whose answers depend on which intent asks (the scripted provider: each
    intent reads its script from the start)."""

    def for_intent(self, intent_id: str) -> LLMClient: ...


def client_for_intent(llm: LLMClient, intent_id: str) -> LLMClient:
    """The client to use for `intent_id`'s calls: `llm` itself unless it is `PerIntent`."""
    return llm.for_intent(intent_id) if isinstance(llm, PerIntent) else llm


@dataclass(frozen=True)
class CallRecord:
    """One finished call as the store keeps it (the transcript line)."""

    request: LLMRequest
    response: LLMResponse | None
    error: str | None
    provider: str
    model: str
    latency_s: float


class CallObserver(Protocol):
    """Told about every call before `complete` returns; may raise (e.g. budget exceeded)."""

    async def __call__(self, record: CallRecord) -> None: ...
