"""Report every call, successful or not, to a `CallObserver` (transcript, usage, budgets)."""

from __future__ import annotations

import time

from qlp.errors import BudgetExceededError
from qlp.llm.base import CallObserver, CallRecord, LLMClient, LLMRequest, LLMResponse


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return text if text else type(exc).__name__


class RecordingClient:
    """Wraps an `LLMClient`; the observer may raise (e.g. BudgetExceededError) to stop work."""

    def __init__(self, inner: LLMClient, observer: CallObserver) -> None:
        self._inner = inner
        self._observer = observer

    @property
    def provider(self) -> str:
        return self._inner.provider

    @property
    def model(self) -> str:
        return self._inner.model

    @property
    def inner(self) -> LLMClient:
        return self._inner

    async def complete(self, request: LLMRequest) -> LLMResponse:
        started = time.perf_counter()
        try:
            response = await self._inner.complete(request)
        except Exception as exc:
            await self._observer(
                CallRecord(
                    request=request,
                    response=None,
                    error=_describe(exc),
                    provider=self._inner.provider,
                    model=self._inner.model,
                    latency_s=time.perf_counter() - started,
                )
            )
            raise
        try:
            await self._observer(
                CallRecord(
                    request=request,
                    response=response,
                    error=None,
                    provider=response.provider,
                    model=response.model,
                    latency_s=time.perf_counter() - started,
                )
            )
        except BudgetExceededError as exc:
            exc.response = response  # what went over the budget may be wrong by itself
            raise
        return response

    async def aclose(self) -> None:
        await self._inner.aclose()
