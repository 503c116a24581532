"""Retrying model calls: one policy for every provider.

The SDKs' own retries are switched off (``max_retries=0``) so that OpenAI, Azure, Anthropic and
OpenAI-compatible servers back off the same way and every retry is visible to the caller through
``on_retry``. Adapters turn SDK exceptions into `CallFailure` (classified as transient or not);
`call_with_retries` does the waiting and raises `LLMCallError` when it gives up.
"""

from __future__ import annotations

import asyncio
import email.utils
import math
import random
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Protocol, TypeVar

from qlp.errors import LLMError

T = TypeVar("T")

# 408 request timeout, 409 conflict (lock contention), 425 too early, 429 rate limited.
_TRANSIENT_4XX = frozenset({408, 409, 425, 429})


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long to retry a transient failure.

    `max_retries` counts retries, so a call is attempted at most ``max_retries + 1`` times.
    The n-th retry waits a jittered ``base_s * 2**(n-1)`` seconds, never more than `max_s`;
    a ``Retry-After`` header from the server replaces that delay (still capped at `max_s`).
    """

    max_retries: int = 4
    base_s: float = 1.0
    max_s: float = 60.0

    def __post_init__(self) -> None:
        if self.max_retries < 0:
            raise ValueError("max_retries must be >= 0")
        if self.base_s < 0 or self.max_s < 0:
            raise ValueError("retry delays must be >= 0")

    def backoff_s(self, retry_number: int) -> float:
        """Delay before retry number `retry_number` (1-based), with jitter in [50%, 100%]."""
        exponent = min(max(retry_number - 1, 0), 60)
        ceiling = min(self.base_s * math.pow(2, exponent), self.max_s)
        # Jitter spreads retries of concurrent tasks; the floor keeps backoff meaningful.
        return ceiling * (0.5 + random.random() * 0.5)  # noqa: S311 - not security related


class OnRetry(Protocol):
    """Told before each wait: the attempt that failed (1-based), the wait, and why."""

    async def __call__(self, attempt: int, delay_s: float, reason: str) -> None: ...


class CallFailure(Exception):
    """A classified failure of one attempt, raised by an adapter inside its call factory."""

    def __init__(
        self,
        message: str,
        *,
        retryable: bool,
        status: int | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.retryable = retryable
        self.status = status
        self.retry_after_s = retry_after_s

    @property
    def reason(self) -> str:
        return f"HTTP {self.status}: {self.message}" if self.status is not None else self.message


class LLMCallError(LLMError):
    """A model call that failed for good; carries what the caller may want to branch on."""

    def __init__(
        self,
        message: str,
        *,
        provider: str,
        attempts: int,
        status: int | None = None,
        retryable: bool = False,
    ) -> None:
        super().__init__(message)
        self.provider = provider
        self.attempts = attempts
        self.status = status
        self.retryable = retryable


def is_transient_status(status: int) -> bool:
    return status in _TRANSIENT_4XX or status >= 500


def parse_retry_after(
    headers: Mapping[str, str] | None, *, now: float | None = None
) -> float | None:
    """Seconds the server asked us to wait, from ``retry-after-ms`` or ``Retry-After``.

    ``Retry-After`` may be a number of seconds or an HTTP-date. Returns None when absent or
    unreadable; a date in the past gives 0.
    """
    if not headers:
        return None
    lowered = {k.lower(): v for k, v in headers.items()}
    millis = lowered.get("retry-after-ms")
    if millis is not None:
        try:
            value = float(millis) / 1000.0
        except ValueError:
            value = math.nan
        if math.isfinite(value) and value >= 0:
            return value
    raw = lowered.get("retry-after")
    if raw is None:
        return None
    raw = raw.strip()
    try:
        seconds = float(raw)
    except ValueError:
        pass
    else:
        return seconds if math.isfinite(seconds) and seconds >= 0 else None
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError, IndexError):
        return None
    current = time.time() if now is None else now
    return max(0.0, when.timestamp() - current)


def should_retry_header(headers: Mapping[str, str] | None) -> bool | None:
    """The ``x-should-retry`` hint OpenAI and Anthropic send; None when absent."""
    if not headers:
        return None
    for key, value in headers.items():
        if key.lower() == "x-should-retry":
            if value.strip().lower() == "true":
                return True
            if value.strip().lower() == "false":
                return False
    return None


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


async def call_with_retries(
    factory: Callable[[], Awaitable[T]],
    *,
    policy: RetryPolicy,
    provider: str,
    model: str = "",
    on_retry: OnRetry | None = None,
) -> tuple[T, int]:
    """Await ``factory()`` until it succeeds; return the result and the number of attempts.

    Only `CallFailure` is handled: transient ones are retried with backoff, the others (and the
    last transient one) become `LLMCallError`. Any other exception propagates unchanged.
    """
    attempt = 0
    who = f"{provider} ({model})" if model else provider
    while True:
        attempt += 1
        try:
            return await factory(), attempt
        except CallFailure as failure:
            status = f" (HTTP {failure.status})" if failure.status is not None else ""
            if not failure.retryable:
                raise LLMCallError(
                    f"{who} refused the request{status}: {failure.message}",
                    provider=provider,
                    attempts=attempt,
                    status=failure.status,
                    retryable=False,
                ) from None
            if attempt > policy.max_retries:
                raise LLMCallError(
                    f"{who} call failed after {_plural(attempt, 'attempt')}{status}: "
                    f"{failure.message}",
                    provider=provider,
                    attempts=attempt,
                    status=failure.status,
                    retryable=True,
                ) from None
            if failure.retry_after_s is not None:
                delay = min(failure.retry_after_s, policy.max_s)
            else:
                delay = policy.backoff_s(attempt)
            if on_retry is not None:
                await on_retry(attempt, delay, failure.reason)
            await asyncio.sleep(delay)


# -- turning provider errors into readable failures ----------------------------------------

_MAX_ERROR_TEXT = 300
_KEY_LIKE = re.compile(r"\b(sk-[A-Za-z0-9_\-*]{6,}|Bearer\s+\S+)")


def redact(text: str, secrets: tuple[str, ...] = ()) -> str:
    """Hide API keys (the ones we hold, and anything shaped like one) in an error text."""
    for secret in secrets:
        if secret and len(secret) >= 6:
            text = text.replace(secret, "***")
    return _KEY_LIKE.sub("***", text)


def _shorten(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= _MAX_ERROR_TEXT else flat[:_MAX_ERROR_TEXT] + "..."


def error_text(body: object, fallback: str) -> str:
    """The provider's own explanation from an error body (``{"error": {"message": ...}}``)."""
    inner = body
    if isinstance(inner, Mapping) and isinstance(inner.get("error"), Mapping):
        inner = inner["error"]
    if isinstance(inner, Mapping):
        message = inner.get("message")
        if isinstance(message, str) and message.strip():
            return _shorten(message)
    if isinstance(body, str) and body.strip():
        return _shorten(body)
    return _shorten(fallback) if fallback.strip() else "no explanation given"


def failure_from_status(
    status: int,
    headers: Mapping[str, str] | None,
    body: object,
    fallback: str,
    *,
    secrets: tuple[str, ...] = (),
) -> CallFailure:
    """Classify an HTTP error response: transient statuses retry unless the server says not."""
    hint = should_retry_header(headers)
    return CallFailure(
        redact(error_text(body, fallback), secrets),
        retryable=hint if hint is not None else is_transient_status(status),
        status=status,
        retry_after_s=parse_retry_after(headers),
    )
