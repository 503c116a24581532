from __future__ import annotations

import pytest

from qlp.config import DEFAULT_PRICES
from qlp.errors import ConfigError, LLMError
from qlp.llm.anthropic_provider import AnthropicClient
from qlp.llm.base import LLMRequest, Message
from qlp.llm.retry import LLMCallError, RetryPolicy

REQUEST = LLMRequest(
    messages=(
        Message("system", "You write code."),
        Message("system", "Answer in JSON."),
        Message("user", "task QL-DEV-001"),
        Message("assistant", "{bad"),
        Message("user", "again, QL-DEV-001"),
    ),
    max_tokens=1000,
)
FAST = RetryPolicy(max_retries=2, base_s=0.01, max_s=0.05)


class RetryLog:
    def __init__(self) -> None:
        self.calls: list[tuple[int, float, str]] = []

    async def __call__(self, attempt: int, delay_s: float, reason: str) -> None:
        self.calls.append((attempt, delay_s, reason))


def make(srv, *, retry: RetryPolicy = FAST, timeout_s: float = 5.0, on_retry=None, **kw):
    options = {"model": "claude-haiku-4-5", "api_key": "sk-ant-test-key-0000"}
    options.update(kw)
    return AnthropicClient(
        base_url=srv.anthropic_base_url,
        timeout_s=timeout_s,
        retry=retry,
        prices=DEFAULT_PRICES,
        on_retry=on_retry,
        **options,
    )


async def test_anthropic_round_trip(fake_llm, closing) -> None:
    srv = fake_llm(
        [{"when": "again", "content": '{"files": []}', "model": "claude-haiku-4-5-20251001"}]
    )
    client = closing(make(srv))
    response = await client.complete(REQUEST)
    assert response.content == '{"files": []}'
    assert response.provider == "anthropic"
    assert response.model == "claude-haiku-4-5-20251001"
    assert response.finish_reason == "end_turn"
    assert response.attempts == 1
    assert response.usage.output_tokens == len('{"files": []}') // 4
    expected = (response.usage.input_tokens * 1.0 + response.usage.output_tokens * 5.0) / 1e6
    assert response.cost_usd == pytest.approx(expected)

    [sent] = srv.requests
    assert sent.protocol == "anthropic"
    assert sent.path == "/v1/messages"
    assert sent.body["system"] == "You write code.\n\nAnswer in JSON."
    assert sent.body["messages"] == [
        {"role": "user", "content": "task QL-DEV-001"},
        {"role": "assistant", "content": "{bad"},
        {"role": "user", "content": "again, QL-DEV-001"},
    ]
    assert sent.body["max_tokens"] == 1000
    assert "x-api-key" not in sent.headers
    assert "anthropic-version" in sent.headers


async def test_no_system_parameter_without_system_messages(fake_llm, closing) -> None:
    srv = fake_llm([{"content": "ok"}])
    client = closing(make(srv))
    await client.complete(LLMRequest(messages=(Message("user", "hi"),)))
    assert "system" not in srv.requests[0].body


async def test_429_then_overloaded_then_success(fake_llm, closing) -> None:
    srv = fake_llm(
        [
            {"status": 429, "headers": {"retry-after": "0.03"}},
            {"status": 529},
            {"content": "finally"},
        ]
    )
    log = RetryLog()
    client = closing(make(srv, on_retry=log))
    response = await client.complete(REQUEST)
    assert (response.content, response.attempts) == ("finally", 3)
    assert log.calls[0][:2] == (1, 0.03)
    assert log.calls[0][2].startswith("HTTP 429")
    assert log.calls[1][2].startswith("HTTP 529")


async def test_bad_request_is_not_retried(fake_llm, closing) -> None:
    body = {"type": "error", "error": {"type": "invalid_request_error", "message": "bad role"}}
    srv = fake_llm([{"status": 400, "body": body}, {"content": "unused"}])
    client = closing(make(srv))
    with pytest.raises(LLMCallError) as info:
        await client.complete(REQUEST)
    assert info.value.attempts == 1
    assert "refused the request (HTTP 400): bad role" in str(info.value)
    assert len(srv.requests) == 1


async def test_500s_exhausted(fake_llm, closing) -> None:
    srv = fake_llm([{"status": 500}] * 3)
    client = closing(make(srv))
    with pytest.raises(LLMError, match=r"after 3 attempts \(HTTP 500\): injected HTTP 500"):
        await client.complete(REQUEST)


async def test_timeout(fake_llm, closing) -> None:
    srv = fake_llm([{"delay_s": 3, "content": "late"}])
    client = closing(make(srv, timeout_s=0.3, retry=RetryPolicy(max_retries=0, base_s=0, max_s=0)))
    with pytest.raises(LLMError, match="timeout"):
        await client.complete(REQUEST)


async def test_unknown_model_cost_is_none(fake_llm, closing) -> None:
    srv = fake_llm([{"content": "ok"}])
    client = closing(make(srv, model="claude-future-9"))
    assert (await client.complete(REQUEST)).cost_usd is None


def test_missing_key_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="ANTHROPIC_API_KEY"):
        AnthropicClient(model="claude-haiku-4-5", api_key=None, timeout_s=1, retry=FAST, prices={})
