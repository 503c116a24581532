from __future__ import annotations

import socket
import time

import pytest

from qlp.config import DEFAULT_PRICES
from qlp.errors import ConfigError, LLMError
from qlp.llm.base import LLMRequest, Message
from qlp.llm.openai_compat import OpenAICompatClient
from qlp.llm.retry import LLMCallError, RetryPolicy

REQUEST = LLMRequest(
    messages=(Message("system", "You plan software."), Message("user", "PLAN: a todo API")),
    max_tokens=321,
    temperature=0.1,
)
FAST = RetryPolicy(max_retries=2, base_s=0.01, max_s=0.05)


class RetryLog:
    def __init__(self) -> None:
        self.calls: list[tuple[int, float, str]] = []

    async def __call__(self, attempt: int, delay_s: float, reason: str) -> None:
        self.calls.append((attempt, delay_s, reason))


def make(srv, *, retry: RetryPolicy = FAST, timeout_s: float = 5.0, on_retry=None, **kw):
    options = {"model": "gpt-4o", "api_key": "sk-test-secret-123456", "base_url": srv.base_url}
    options.update(kw)
    return OpenAICompatClient(
        timeout_s=timeout_s, retry=retry, prices=DEFAULT_PRICES, on_retry=on_retry, **options
    )


async def test_openai_round_trip(fake_llm, closing) -> None:
    srv = fake_llm([{"when": "PLAN", "content": '{"tasks": []}'}])
    client = closing(make(srv))
    response = await client.complete(REQUEST)
    assert response.content == '{"tasks": []}'
    assert response.provider == "openai"
    assert response.model == "gpt-4o"
    assert response.attempts == 1
    assert response.finish_reason == "stop"
    prompt_chars = len("You plan software.") + 1 + len("PLAN: a todo API")
    assert response.usage.input_tokens == prompt_chars // 4
    assert response.usage.output_tokens == len('{"tasks": []}') // 4
    expected = (response.usage.input_tokens * 2.5 + response.usage.output_tokens * 10.0) / 1e6
    assert response.cost_usd == pytest.approx(expected)
    assert response.latency_s > 0

    [sent] = srv.requests
    assert sent.path == "/v1/chat/completions"
    assert sent.body["model"] == "gpt-4o"
    assert sent.body["messages"] == [m.as_dict() for m in REQUEST.messages]
    assert sent.body["response_format"] == {"type": "json_object"}
    assert sent.body["max_tokens"] == 321
    assert sent.body["temperature"] == 0.1
    assert "authorization" not in sent.headers  # the fake server drops credentials
    assert sent.credentials == {"authorization"}  # ... after noting that they came


async def test_json_mode_off_sends_no_response_format(fake_llm, closing) -> None:
    srv = fake_llm([{"content": "plain"}])
    client = closing(make(srv))
    await client.complete(LLMRequest(messages=(Message("user", "hi"),), json_mode=False))
    assert "response_format" not in srv.requests[0].body


async def test_unknown_model_has_unknown_cost(fake_llm, closing) -> None:
    srv = fake_llm([{"content": "ok"}])
    client = closing(make(srv, model="qwen2.5-coder:7b", provider_name="ollama", api_key=None))
    response = await client.complete(REQUEST)
    assert response.provider == "ollama"
    assert response.cost_usd is None


async def test_compatible_server_without_key_gets_a_placeholder(fake_llm, closing) -> None:
    srv = fake_llm([{"content": "ok"}])
    client = closing(make(srv, api_key=None))
    assert (await client.complete(REQUEST)).content == "ok"


async def test_azure_deployment_path_and_reported_model(fake_llm, closing) -> None:
    srv = fake_llm([{"content": "from azure", "model": "gpt-4o-mini-2024-07-18"}])
    client = closing(
        make(
            srv,
            model="my-deployment",
            base_url=None,
            azure_endpoint=srv.azure_endpoint,
            azure_api_version="2024-10-21",
            provider_name="azure",
        )
    )
    response = await client.complete(REQUEST)
    assert response.content == "from azure"
    assert response.provider == "azure"
    assert response.model == "gpt-4o-mini-2024-07-18"
    # Priced by the reported model through the prefix "gpt-4o-mini", not "gpt-4o".
    expected = (response.usage.input_tokens * 0.15 + response.usage.output_tokens * 0.6) / 1e6
    assert response.cost_usd == pytest.approx(expected)
    [sent] = srv.requests
    assert sent.protocol == "azure"
    assert sent.path == "/openai/deployments/my-deployment/chat/completions"
    assert sent.query == {"api-version": "2024-10-21"}
    assert "api-key" not in sent.headers
    assert "api-key" in sent.credentials


async def test_429_retry_after_is_honoured(fake_llm, closing) -> None:
    srv = fake_llm(
        [
            {"status": 429, "headers": {"Retry-After": "1"}},
            {"content": "after the wait"},
        ]
    )
    log = RetryLog()
    client = closing(
        make(srv, retry=RetryPolicy(max_retries=2, base_s=0.01, max_s=5), on_retry=log)
    )
    response = await client.complete(REQUEST)
    assert response.content == "after the wait"
    assert response.attempts == 2
    assert log.calls == [(1, 1.0, "HTTP 429: injected HTTP 429")]
    assert len(srv.requests) == 2


async def test_retry_after_is_capped(fake_llm, closing) -> None:
    srv = fake_llm([{"status": 503, "headers": {"Retry-After": "120"}}, {"content": "ok"}])
    log = RetryLog()
    client = closing(make(srv, on_retry=log))
    assert (await client.complete(REQUEST)).attempts == 2
    assert log.calls[0][1] == FAST.max_s


async def test_500s_exhausted(fake_llm, closing) -> None:
    srv = fake_llm(
        [{"status": 500, "body": {"error": {"message": "the model is on fire"}}}] * 3
        + [{"content": "too late"}]
    )
    log = RetryLog()
    client = closing(make(srv, on_retry=log))
    with pytest.raises(LLMError) as info:
        await client.complete(REQUEST)
    assert isinstance(info.value, LLMCallError)
    assert info.value.attempts == 3
    text = str(info.value)
    assert text.startswith("openai (gpt-4o) call failed after 3 attempts (HTTP 500)")
    assert "the model is on fire" in text
    assert len(srv.requests) == 3
    assert [c[0] for c in log.calls] == [1, 2]
    assert all(0.005 <= c[1] <= 0.05 for c in log.calls)


@pytest.mark.parametrize("status", [400, 401, 403, 404])
async def test_client_errors_are_not_retried(fake_llm, closing, status: int) -> None:
    srv = fake_llm([{"status": status}, {"content": "should not be used"}])
    client = closing(make(srv))
    with pytest.raises(LLMCallError) as info:
        await client.complete(REQUEST)
    assert info.value.attempts == 1
    assert info.value.status == status
    assert f"HTTP {status}" in str(info.value)
    assert len(srv.requests) == 1


async def test_secrets_are_not_echoed(fake_llm, closing) -> None:
    body = {"error": {"message": "Incorrect API key provided: sk-test-secret-123456."}}
    srv = fake_llm([{"status": 401, "body": body}])
    client = closing(make(srv))
    with pytest.raises(LLMError) as info:
        await client.complete(REQUEST)
    assert "secret-123456" not in str(info.value)
    assert "Incorrect API key provided" in str(info.value)
    assert "Traceback" not in str(info.value)


async def test_timeout(fake_llm, closing) -> None:
    srv = fake_llm([{"delay_s": 3, "content": "too slow"}])
    client = closing(make(srv, timeout_s=0.3, retry=RetryPolicy(max_retries=0, base_s=0, max_s=0)))
    started = time.perf_counter()
    with pytest.raises(LLMError, match="timeout") as info:
        await client.complete(REQUEST)
    assert time.perf_counter() - started < 2.5
    assert "0.3s" in str(info.value)


async def test_timeout_is_retried_like_other_transient_failures(fake_llm, closing) -> None:
    srv = fake_llm([{"delay_s": 3, "content": "too slow"}, {"content": "quick"}])
    log = RetryLog()
    client = closing(make(srv, timeout_s=0.3, on_retry=log))
    response = await client.complete(REQUEST)
    assert (response.content, response.attempts) == ("quick", 2)
    assert "timeout" in log.calls[0][2]


async def test_malformed_body_is_retried(fake_llm, closing) -> None:
    srv = fake_llm([{"raw": "{definitely not json"}, {"content": "fine"}])
    log = RetryLog()
    client = closing(make(srv, on_retry=log))
    response = await client.complete(REQUEST)
    assert response.content == "fine"
    assert "not valid JSON" in log.calls[0][2]


async def test_exhausted_script_is_obvious(fake_llm, closing) -> None:
    srv = fake_llm([])
    client = closing(make(srv, retry=RetryPolicy(max_retries=0, base_s=0, max_s=0)))
    with pytest.raises(LLMError, match="no unused response for this call"):
        await client.complete(REQUEST)


async def test_connection_refused(closing) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = closing(
        OpenAICompatClient(
            model="gpt-4o",
            api_key=None,
            base_url=f"http://127.0.0.1:{port}/v1",
            timeout_s=2,
            retry=RetryPolicy(max_retries=1, base_s=0.01, max_s=0.01),
            prices=DEFAULT_PRICES,
        )
    )
    with pytest.raises(LLMCallError, match=r"after 2 attempts: could not connect to 127\.0\.0\.1"):
        await client.complete(REQUEST)


def test_missing_credentials_are_config_errors() -> None:
    common = {"model": "gpt-4o", "timeout_s": 1.0, "retry": FAST, "prices": DEFAULT_PRICES}
    with pytest.raises(ConfigError, match="OPENAI_API_KEY"):
        OpenAICompatClient(api_key=None, **common)
    with pytest.raises(ConfigError, match="AZURE_OPENAI_API_KEY"):
        OpenAICompatClient(api_key=None, azure_endpoint="http://127.0.0.1:9", **common)
