from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from qlp.engine.replay import ReplayClient, compare
from qlp.errors import LLMError
from qlp.llm.base import LLMRequest, Message


def _zip(path: Path, entries: dict[str, str]) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        for name, body in entries.items():
            z.writestr(name, body)
    return path


def test_compare_names_changed_added_and_missing_entries(tmp_path: Path) -> None:
    a = _zip(tmp_path / "a.zip", {"manifest.json": "{}", "project/a.py": "1", "gone": "x"})
    b = _zip(tmp_path / "b.zip", {"manifest.json": "{}", "project/a.py": "2", "new": "y"})
    assert compare(a, b) == ["gone", "new", "project/a.py"]
    assert compare(a, a) == []


def _req(purpose: str, text: str) -> LLMRequest:
    return LLMRequest(messages=(Message("user", text),), purpose=purpose)


async def test_replay_client_answers_by_purpose_and_messages() -> None:
    entries = [
        {
            "purpose": "task:B",
            "request": {"messages": [{"role": "user", "content": "b"}]},
            "response": "B",
            "usage": {"input_tokens": 3, "output_tokens": 4},
            "cost_usd": None,
            "provider": "openai",
            "model": "m",
        },
        {
            "purpose": "plan",
            "request": {"messages": [{"role": "user", "content": "p"}]},
            "response": "P",
            "usage": {},
            "cost_usd": 0.1,
            "provider": "openai",
            "model": "m",
        },
    ]
    client = ReplayClient(entries)
    plan = await client.complete(_req("plan", "p"))
    assert plan.content == "P"
    assert plan.cost_usd == 0.1
    b = await client.complete(_req("task:B", "something else"))  # falls back on purpose
    assert (b.content, b.usage.input_tokens, b.cost_usd) == ("B", 3, None)
    with pytest.raises(LLMError, match="no unused answer"):
        await client.complete(_req("plan", "p"))
