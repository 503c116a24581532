"""What the SDK-backed adapters share: naming, and one retried call per `complete`."""

from __future__ import annotations

import json
import time
from typing import Generic, TypeVar
from urllib.parse import urlsplit

from qlp.llm.base import LLMRequest, LLMResponse
from qlp.llm.retry import CallFailure, OnRetry, RetryPolicy, call_with_retries, redact

Raw = TypeVar("Raw")


class SDKClient(Generic[Raw]):
    """Subclasses set the attributes below and implement `_attempt` (one HTTP call, raising
    `CallFailure` for what may be retried) and `_response` (the SDK's answer -> LLMResponse)."""

    _provider: str
    _model: str
    _retry: RetryPolicy
    _on_retry: OnRetry | None
    _timeout_s: float
    _endpoint: str
    _secrets: tuple[str, ...]

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

    # -- how a failed attempt is described (the same words for every provider) ----------------
    def _timed_out(self) -> CallFailure:
        return CallFailure(
            f"no answer within the {self._timeout_s:g}s timeout (QLP_LLM_TIMEOUT_S)",
            retryable=True,
        )

    def _unreachable(self, exc: BaseException) -> CallFailure:
        cause = exc.__cause__
        detail = f": {type(cause).__name__}" if cause is not None else ""
        host = urlsplit(self._endpoint).hostname or self._endpoint
        return CallFailure(f"could not connect to {host}{detail}", retryable=True)

    def _not_json(self, exc: json.JSONDecodeError) -> CallFailure:
        return CallFailure(
            f"the server sent a response that is not valid JSON ({exc.msg})", retryable=True
        )

    def _bad_shape(self, message: str) -> CallFailure:
        return CallFailure(
            f"the server sent a response in an unexpected shape: {message}", retryable=True
        )

    def _refused(self, exc: BaseException) -> CallFailure:
        return CallFailure(redact(str(exc), self._secrets), retryable=False)

    async def _attempt(self, request: LLMRequest) -> Raw:
        raise NotImplementedError

    def _response(
        self, request: LLMRequest, raw: Raw, attempts: int, latency_s: float
    ) -> LLMResponse:
        raise NotImplementedError
