from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from qlp.errors import LLMError, ScriptExhaustedError, UserInputError
from qlp.llm.base import LLMRequest, Message
from qlp.llm.scripted import Script, ScriptedClient


def ask(text: str, system: str = "be brief") -> LLMRequest:
    return LLMRequest(messages=(Message("system", system), Message("user", text)))


def write(tmp_path: Path, data: object) -> Path:
    path = tmp_path / "script.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


async def test_when_matches_a_substring_of_the_last_user_message() -> None:
    script = Script(
        [
            {"when": "PLAN", "content": "plan answer"},
            {"when": "QL-DEV-001", "content": "dev answer"},
        ]
    )
    client = ScriptedClient(script)
    first = await client.complete(ask("write code for QL-DEV-001"))
    second = await client.complete(ask("make a PLAN please"))
    assert (first.content, second.content) == ("dev answer", "plan answer")


async def test_when_is_case_sensitive_and_only_the_last_user_message_counts() -> None:
    script = Script([{"when": "plan", "content": "x"}])
    request = LLMRequest(
        messages=(Message("user", "plan"), Message("assistant", "?"), Message("user", "PLAN"))
    )
    with pytest.raises(ScriptExhaustedError):
        await ScriptedClient(script).complete(request)


async def test_first_unused_entry_wins_in_order() -> None:
    script = Script(
        [
            {"content": "one"},
            {"when": "special", "content": "two"},
            {"content": "three"},
        ]
    )
    client = ScriptedClient(script)
    answers = [(await client.complete(ask(t))).content for t in ("a", "special", "b")]
    assert answers == ["one", "two", "three"]
    assert script.used == 3
    assert script.remaining == 0


async def test_exhausted_script_names_file_count_and_message(tmp_path: Path) -> None:
    path = write(
        tmp_path, {"responses": [{"content": "only one"}, {"when": "never", "content": "x"}]}
    )
    client = ScriptedClient(Script.load(path))
    await client.complete(ask("first"))
    with pytest.raises(ScriptExhaustedError) as info:
        await client.complete(ask("second question about widgets"))
    text = str(info.value)
    assert str(path) in text
    assert "1 of 2 entries used" in text
    assert "second question about widgets" in text
    assert isinstance(info.value, LLMError)


async def test_usage_is_estimated_and_cost_is_known_zero() -> None:
    client = ScriptedClient(Script([{"content": "x" * 400}]), model="scripted-planner")
    response = await client.complete(ask("y" * 800, system="z" * 7))
    assert response.provider == "scripted"
    assert response.model == "scripted-planner"
    assert response.usage.output_tokens == 100
    assert response.usage.input_tokens == (800 + 7 + 1) // 4
    assert response.cost_usd == 0.0


async def test_tiny_texts_count_at_least_one_token() -> None:
    response = await ScriptedClient(Script([{"content": ""}])).complete(ask(""))
    assert response.usage.input_tokens >= 1
    assert response.usage.output_tokens == 1


async def test_fault_entries_are_refused_by_the_scripted_client() -> None:
    client = ScriptedClient(Script([{"status": 429}]))
    with pytest.raises(LLMError, match="fake HTTP server"):
        await client.complete(ask("x"))


def test_extra_keys_are_allowed() -> None:
    script = Script.from_data(
        {"responses": [{"content": "a", "delay_s": 1, "model": "m", "note": "anything"}]}
    )
    assert script.take("q")["content"] == "a"


def test_take_is_thread_safe() -> None:
    script = Script([{"content": str(i)} for i in range(400)])
    taken: list[str] = []
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(50):
            value = script.take("q")["content"]
            with lock:
                taken.append(value)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(taken, key=int) == [str(i) for i in range(400)]


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(UserInputError, match="script file not found"):
        Script.load(tmp_path / "nope.json")


def test_bad_json_names_the_position(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text('{"responses": [\n  {"content": "a",}\n]}', encoding="utf-8")
    with pytest.raises(UserInputError, match=r"not valid JSON: .* line 2"):
        Script.load(path)


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        ([{"content": "a"}], '"responses" list'),
        ({"answers": []}, '"responses" list'),
        ({"responses": {"content": "a"}}, "must be a list"),
        ({"responses": ["just text"]}, "response #1 must be a JSON object"),
        ({"responses": [{"content": "a"}, {"when": "x"}]}, 'response #2 has no "content"'),
        ({"responses": [{"content": 42}]}, '"content" must be a string'),
        ({"responses": [{"when": 3, "content": "a"}]}, '"when" must be a string'),
    ],
)
def test_wrong_shape(tmp_path: Path, data: object, problem: str) -> None:
    path = write(tmp_path, data)
    with pytest.raises(UserInputError) as info:
        Script.load(path)
    assert problem in str(info.value)
    assert str(path) in str(info.value)


async def test_each_intent_reads_the_script_from_the_start() -> None:
    client = ScriptedClient(Script([{"content": "one"}, {"content": "two"}]))
    a, b = client.for_intent("QLI-A"), client.for_intent("QLI-B")
    assert [(await a.complete(ask("x"))).content for _ in range(2)] == ["one", "two"]
    assert [(await b.complete(ask("x"))).content for _ in range(2)] == ["one", "two"]
    # The same intent keeps its place (a re-run takes the next unused answers) ...
    with pytest.raises(ScriptExhaustedError):
        await client.for_intent("QLI-A").complete(ask("x"))
    # ... and the shared script underneath is untouched.
    assert client.script.used == 0


def test_intent_sessions_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    import qlp.llm.scripted as scripted

    monkeypatch.setattr(scripted, "MAX_INTENT_SESSIONS", 2)
    client = ScriptedClient(Script([{"content": "one"}]))
    first = client.for_intent("QLI-1")
    client.for_intent("QLI-2")
    assert client.for_intent("QLI-1") is first  # still remembered, now the most recent
    client.for_intent("QLI-3")  # evicts QLI-2, the least recently used
    assert client.for_intent("QLI-1") is first
    assert client.for_intent("QLI-2") is not first
