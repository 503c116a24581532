from __future__ import annotations

import email.utils

import pytest

from qlp.errors import LLMError
from qlp.llm.retry import (
    CallFailure,
    LLMCallError,
    RetryPolicy,
    call_with_retries,
    error_text,
    failure_from_status,
    parse_retry_after,
    redact,
)

NOW = 1_800_000_000.0


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[int, float, str]] = []

    async def __call__(self, attempt: int, delay_s: float, reason: str) -> None:
        self.calls.append((attempt, delay_s, reason))


def test_retry_after_seconds_and_milliseconds() -> None:
    assert parse_retry_after({"Retry-After": "7"}) == 7.0
    assert parse_retry_after({"retry-after": "0.5"}) == 0.5
    # The millisecond variant is more precise and wins.
    assert parse_retry_after({"retry-after-ms": "1500", "Retry-After": "2"}) == 1.5


def test_retry_after_http_date() -> None:
    future = email.utils.formatdate(NOW + 30, usegmt=True)
    past = email.utils.formatdate(NOW - 30, usegmt=True)
    assert parse_retry_after({"Retry-After": future}, now=NOW) == pytest.approx(30, abs=1)
    assert parse_retry_after({"Retry-After": past}, now=NOW) == 0.0


@pytest.mark.parametrize("headers", [None, {}, {"Retry-After": "soon"}, {"Retry-After": "-3"}])
def test_retry_after_absent_or_unreadable(headers: dict[str, str] | None) -> None:
    assert parse_retry_after(headers) is None


def test_backoff_grows_and_is_capped() -> None:
    policy = RetryPolicy(max_retries=10, base_s=1.0, max_s=5.0)
    for _ in range(50):
        assert 0.5 <= policy.backoff_s(1) <= 1.0
        assert 2.0 <= policy.backoff_s(3) <= 4.0
        assert 2.5 <= policy.backoff_s(9) <= 5.0


def test_policy_rejects_negative_values() -> None:
    with pytest.raises(ValueError, match="max_retries"):
        RetryPolicy(max_retries=-1, base_s=1, max_s=1)


async def test_transient_failures_are_retried_until_success() -> None:
    outcomes: list[CallFailure | str] = [
        CallFailure("busy", retryable=True, status=503),
        CallFailure("slow down", retryable=True, status=429, retry_after_s=0.02),
        "done",
    ]

    async def factory() -> str:
        outcome = outcomes.pop(0)
        if isinstance(outcome, CallFailure):
            raise outcome
        return outcome

    recorder = Recorder()
    result, attempts = await call_with_retries(
        factory,
        policy=RetryPolicy(max_retries=3, base_s=0.01, max_s=1.0),
        provider="test",
        on_retry=recorder,
    )
    assert (result, attempts) == ("done", 3)
    assert [c[0] for c in recorder.calls] == [1, 2]
    assert recorder.calls[0][2] == "HTTP 503: busy"
    assert recorder.calls[1][1] == 0.02  # the server's Retry-After replaces the backoff


async def test_retry_after_is_capped_by_max_s() -> None:
    failures = [CallFailure("wait", retryable=True, status=429, retry_after_s=3600.0)]

    async def factory() -> str:
        if failures:
            raise failures.pop()
        return "ok"

    recorder = Recorder()
    await call_with_retries(
        factory,
        policy=RetryPolicy(max_retries=1, base_s=0.01, max_s=0.05),
        provider="test",
        on_retry=recorder,
    )
    assert recorder.calls[0][1] == 0.05


async def test_exhausted_retries_raise_llm_error_with_attempts() -> None:
    calls = 0

    async def factory() -> str:
        nonlocal calls
        calls += 1
        raise CallFailure("upstream exploded", retryable=True, status=500)

    with pytest.raises(LLMError) as info:
        await call_with_retries(
            factory,
            policy=RetryPolicy(max_retries=2, base_s=0.001, max_s=0.01),
            provider="openai",
            model="gpt-4o",
        )
    assert calls == 3
    assert isinstance(info.value, LLMCallError)
    assert info.value.attempts == 3
    assert info.value.status == 500
    text = str(info.value)
    assert "openai (gpt-4o)" in text
    assert "after 3 attempts" in text
    assert "HTTP 500" in text
    assert "upstream exploded" in text


async def test_permanent_failure_is_not_retried() -> None:
    calls = 0

    async def factory() -> str:
        nonlocal calls
        calls += 1
        raise CallFailure("bad key", retryable=False, status=401)

    recorder = Recorder()
    with pytest.raises(LLMCallError) as info:
        await call_with_retries(
            factory,
            policy=RetryPolicy(max_retries=5, base_s=0.001, max_s=0.01),
            provider="anthropic",
            on_retry=recorder,
        )
    assert calls == 1
    assert recorder.calls == []
    assert info.value.attempts == 1
    assert "refused" in str(info.value)
    assert "HTTP 401" in str(info.value)


async def test_other_exceptions_propagate_unchanged() -> None:
    async def factory() -> str:
        raise KeyError("bug")

    with pytest.raises(KeyError):
        await call_with_retries(
            factory, policy=RetryPolicy(max_retries=3, base_s=0, max_s=0), provider="x"
        )


@pytest.mark.parametrize(
    ("status", "retryable"),
    [
        (400, False),
        (401, False),
        (403, False),
        (404, False),
        (408, True),
        (429, True),
        (500, True),
        (503, True),
        (529, True),
    ],
)
def test_status_classification(status: int, retryable: bool) -> None:
    assert failure_from_status(status, {}, None, "x").retryable is retryable


def test_server_hint_overrides_status() -> None:
    headers = {"x-should-retry": "false", "retry-after": "3"}
    failure = failure_from_status(429, headers, {"message": "quota used up"}, "fallback")
    assert failure.retryable is False
    assert failure.retry_after_s == 3.0
    assert failure.message == "quota used up"


def test_error_text_prefers_the_provider_message() -> None:
    assert error_text({"error": {"message": "model not found"}}, "x") == "model not found"
    assert error_text({"message": "inner shape"}, "x") == "inner shape"
    assert error_text(None, "Error code: 502") == "Error code: 502"
    assert len(error_text("<html>" + "x" * 5000, "")) < 400


def test_redact_hides_keys() -> None:
    text = "Incorrect API key provided: sk-proj-abcdef1234567890. Key my-own-secret-key bad."
    shown = redact(text, ("my-own-secret-key",))
    assert "abcdef1234567890" not in shown
    assert "my-own-secret-key" not in shown
    assert "Incorrect API key provided" in shown
