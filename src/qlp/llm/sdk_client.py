"""What the SDK-backed adapters share: naming, and one retried call per `complete`."""

from __future__ import annotations

import time
from typing import Generic, TypeVar

from qlp.llm.base import LLMRequest, LLMResponse
from qlp.llm.retry import OnRetry, RetryPolicy, call_with_retries

Raw = TypeVar("Raw")


class SDKClient(Generic[Raw]):
    """Subclasses set the attributes below and implement `_attempt` (one HTTP call, raising
    `CallFailure` for what may be retried) and `_response` (the SDK's answer -> LLMResponse)."""

    _provider: str
    _model: str
    _retry: RetryPolicy
    _on_retry: OnRetry | None

    @property
    def provider(self) -> str:
        return self._provider

    @property
    def model(self) -> str:
        return self._model

    async def complete(self, request: LLMRequest) -> LLMResponse:
        started = time.perf_counter()
        raw, attempts = await call_with_retries(
            lambda: self._attempt(request),
            policy=self._retry,
            provider=self._provider,
            model=self._model,
            on_retry=self._on_retry,
        )
        return self._response(request, raw, attempts, time.perf_counter() - started)

    async def _attempt(self, request: LLMRequest) -> Raw:
        raise NotImplementedError

    def _response(
        self, request: LLMRequest, raw: Raw, attempts: int, latency_s: float
    ) -> LLMResponse:
        raise NotImplementedError
