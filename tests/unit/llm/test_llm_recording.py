from __future__ import annotations

import pytest

from qlp.errors import BudgetExceededError, ScriptExhaustedError
from qlp.llm.base import CallRecord, LLMRequest, Message
from qlp.llm.recording import RecordingClient
from qlp.llm.scripted import Script, ScriptedClient


class Observer:
    def __init__(self, budget: int | None = None) -> None:
        self.records: list[CallRecord] = []
        self.budget = budget
        self.spent = 0

    async def __call__(self, record: CallRecord) -> None:
        self.records.append(record)
        if record.response is not None:
            self.spent += record.response.usage.total
        if self.budget is not None and self.spent > self.budget:
            raise BudgetExceededError(f"spent {self.spent} tokens of {self.budget}")


REQUEST = LLMRequest(messages=(Message("user", "hello"),), purpose="plan")


async def test_success_is_recorded() -> None:
    observer = Observer()
    client = RecordingClient(ScriptedClient(Script([{"content": "hi"}])), observer)
    response = await client.complete(REQUEST)
    assert response.content == "hi"
    [record] = observer.records
    assert record.request is REQUEST
    assert record.response is response
    assert record.error is None
    assert (record.provider, record.model) == ("scripted", "scripted")
    assert record.latency_s >= 0


async def test_failure_is_recorded_then_reraised() -> None:
    observer = Observer()
    client = RecordingClient(ScriptedClient(Script([])), observer)
    with pytest.raises(ScriptExhaustedError):
        await client.complete(REQUEST)
    [record] = observer.records
    assert record.response is None
    assert record.error is not None
    assert "no unused response" in record.error
    assert record.provider == "scripted"


async def test_observer_errors_propagate() -> None:
    observer = Observer(budget=3)
    client = RecordingClient(ScriptedClient(Script([{"content": "x" * 100}])), observer)
    with pytest.raises(BudgetExceededError, match="tokens"):
        await client.complete(REQUEST)
    assert len(observer.records) == 1


async def test_provider_and_model_are_the_inner_ones() -> None:
    client = RecordingClient(ScriptedClient(Script([]), model="m1"), Observer())
    assert (client.provider, client.model) == ("scripted", "m1")
    await client.aclose()
