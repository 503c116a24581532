"""The fake server itself: routes, fault injection and recording."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

import pytest

from qlp.llm.scripted import Script


def post(url: str, body: object, headers: dict[str, str] | None = None):
    data = json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method="POST")
    request.add_header("Content-Type", "application/json")
    for key, value in (headers or {}).items():
        request.add_header(key, value)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, dict(response.headers), response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read().decode()


CHAT = {"model": "m", "messages": [{"role": "user", "content": "hello there"}]}


def test_unknown_route_is_404(fake_llm) -> None:
    srv = fake_llm([{"content": "x"}])
    status, _, body = post(f"{srv.url}/v2/whatever", CHAT)
    assert status == 404
    assert "no route" in body
    assert srv.script.used == 0


def test_exhausted_script_returns_an_explanatory_500(fake_llm) -> None:
    srv = fake_llm([{"when": "nomatch", "content": "x"}])
    status, _, body = post(f"{srv.base_url}/chat/completions", CHAT)
    assert status == 500
    error = json.loads(body)["error"]
    assert error["type"] == "script_exhausted"
    assert "hello there" in error["message"]


def test_status_entry_sends_headers_and_is_consumed(fake_llm) -> None:
    srv = fake_llm([{"status": 429, "headers": {"Retry-After": "7"}}, {"content": "ok"}])
    status, headers, body = post(f"{srv.base_url}/chat/completions", CHAT)
    assert status == 429
    assert headers["Retry-After"] == "7"
    assert json.loads(body)["error"]["message"] == "injected HTTP 429"
    status, _, body = post(f"{srv.base_url}/chat/completions", CHAT)
    assert status == 200
    assert json.loads(body)["choices"][0]["message"]["content"] == "ok"


def test_anthropic_error_shape(fake_llm) -> None:
    srv = fake_llm([{"status": 429}])
    status, _, body = post(f"{srv.anthropic_base_url}/v1/messages", CHAT)
    assert status == 429
    assert json.loads(body) == {
        "type": "error",
        "error": {"type": "rate_limit_error", "message": "injected HTTP 429"},
    }


def test_raw_body_is_sent_verbatim(fake_llm) -> None:
    srv = fake_llm([{"raw": "{oops"}])
    status, _, body = post(f"{srv.base_url}/chat/completions", CHAT)
    assert (status, body) == (200, "{oops")


def test_latency_and_delay(fake_llm) -> None:
    srv = fake_llm([{"content": "a"}, {"content": "b", "delay_s": 0.2}], latency_s=0.1)
    started = time.perf_counter()
    post(f"{srv.base_url}/chat/completions", CHAT)
    first = time.perf_counter() - started
    post(f"{srv.base_url}/chat/completions", CHAT)
    second = time.perf_counter() - started - first
    assert first >= 0.1
    assert second >= 0.3


def test_requests_are_recorded_without_credentials(fake_llm) -> None:
    srv = fake_llm([{"content": "a"}])
    post(
        f"{srv.url}/openai/deployments/dep/chat/completions?api-version=2024-10-21",
        CHAT,
        {"api-key": "secret", "Authorization": "Bearer secret", "X-Custom": "1"},
    )
    [seen] = srv.requests
    assert seen.protocol == "azure"
    assert seen.deployment == "dep"
    assert seen.query == {"api-version": "2024-10-21"}
    assert seen.headers["x-custom"] == "1"
    assert "secret" not in json.dumps(seen.headers)
    assert seen.last_user_message == "hello there"
    srv.clear_requests()
    assert srv.requests == []


def test_azure_without_api_version_is_rejected(fake_llm) -> None:
    srv = fake_llm([{"content": "a"}])
    status, _, _ = post(f"{srv.url}/openai/deployments/dep/chat/completions", CHAT)
    assert status == 400


def test_accepts_a_shared_script_object(fake_llm) -> None:
    from tests.fakes import FakeLLMServer

    script = Script([{"content": "a"}, {"content": "b"}])
    with FakeLLMServer(script) as srv:
        post(f"{srv.base_url}/chat/completions", CHAT)
    assert script.used == 1
    with pytest.raises(RuntimeError, match="not running"):
        _ = srv.port
