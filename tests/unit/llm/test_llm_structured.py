from __future__ import annotations

import json

import pytest
from pydantic import BaseModel, Field, ValidationError

from qlp.config import DEFAULT_PRICES
from qlp.errors import InvalidAnswerError
from qlp.llm.base import CallRecord, LLMRequest, Message
from qlp.llm.openai_compat import OpenAICompatClient
from qlp.llm.recording import RecordingClient
from qlp.llm.retry import RetryPolicy
from qlp.llm.scripted import Script, ScriptedClient
from qlp.llm.structured import (
    ask_structured,
    format_validation_error,
    parse_json_model,
    strip_json_fence,
)


class Task(BaseModel):
    id: str
    priority: int = Field(ge=1)


class Plan(BaseModel):
    tasks: list[Task]


GOOD = '{"tasks": [{"id": "QL-DEV-001", "priority": 1}]}'
REQUEST = LLMRequest(
    messages=(Message("system", "Answer in JSON."), Message("user", "Plan: build an API")),
    purpose="plan",
)


def parse_plan(text: str) -> Plan:
    return parse_json_model(text, Plan)


# -- parse_json_model ----------------------------------------------------------------------
@pytest.mark.parametrize(
    "text",
    [GOOD, f"```json\n{GOOD}\n```", f"  ```\n{GOOD}\n```  ", f"```JSON\r\n{GOOD}\r\n```"],
)
def test_parse_accepts_plain_and_fenced_json(text: str) -> None:
    assert parse_plan(text).tasks[0].id == "QL-DEV-001"


def test_a_fence_that_does_not_enclose_everything_is_kept() -> None:
    text = f"Here you go:\n```json\n{GOOD}\n```"
    assert strip_json_fence(text) == text.strip()
    with pytest.raises(InvalidAnswerError, match="not valid JSON"):
        parse_plan(text)


def test_invalid_json_reports_the_position() -> None:
    with pytest.raises(InvalidAnswerError) as info:
        parse_plan('{"tasks": [}')
    assert str(info.value) == "the answer is not valid JSON: Expecting value at line 1 column 12"


def test_empty_answer() -> None:
    with pytest.raises(InvalidAnswerError, match="empty"):
        parse_plan("  ")


def test_schema_errors_name_the_field_path() -> None:
    text = '{"tasks": [{"priority": 2}, {"id": "b", "priority": 0}]}'
    with pytest.raises(InvalidAnswerError) as info:
        parse_plan(text)
    assert str(info.value) == (
        "tasks[0].id: Field required; "
        "tasks[1].priority: Input should be greater than or equal to 1 (got 0)"
    )


def test_top_level_type_error() -> None:
    with pytest.raises(InvalidAnswerError, match=r"^\(top level\): Input should be"):
        parse_plan("[1, 2]")


def test_many_errors_are_summarised() -> None:
    tasks = [{"id": i} for i in range(20)]
    with pytest.raises(InvalidAnswerError) as info:
        parse_plan(json.dumps({"tasks": tasks}))
    assert "more problems" in str(info.value)
    assert len(str(info.value)) < 1000


# -- ask_structured ------------------------------------------------------------------------
class Spy:
    def __init__(self) -> None:
        self.requests: list[LLMRequest] = []

    async def __call__(self, record: CallRecord) -> None:
        self.requests.append(record.request)


async def test_first_good_answer_is_returned() -> None:
    client = ScriptedClient(Script([{"content": GOOD}]))
    plan, responses = await ask_structured(client, REQUEST, parse_plan, max_reasks=2)
    assert plan.tasks[0].priority == 1
    assert len(responses) == 1


async def test_rejection_is_quoted_back_and_the_answer_kept() -> None:
    spy = Spy()
    client = RecordingClient(ScriptedClient(Script([{"content": "{oops"}, {"content": GOOD}])), spy)
    rejections: list[tuple[int, str]] = []

    async def on_reject(attempt: int, problem: str) -> None:
        rejections.append((attempt, problem))

    plan, responses = await ask_structured(
        client, REQUEST, parse_plan, max_reasks=2, on_reject=on_reject
    )
    assert plan.tasks[0].id == "QL-DEV-001"
    assert len(responses) == 2
    problem = "the answer is not valid JSON: Expecting property name enclosed in double quotes"
    assert rejections[0][0] == 1
    assert rejections[0][1].startswith(problem)
    second = spy.requests[1]
    assert second.messages[:2] == REQUEST.messages
    assert second.messages[2] == Message("assistant", "{oops")
    assert rejections[0][1] in second.last_user_message
    assert "corrected JSON only" in second.last_user_message
    assert second.purpose == "plan"


async def test_reasks_exhausted() -> None:
    client = ScriptedClient(
        Script([{"content": "{}"}, {"content": "nope"}, {"content": '{"tasks": 3}'}])
    )
    with pytest.raises(InvalidAnswerError) as info:
        await ask_structured(client, REQUEST, parse_plan, max_reasks=2)
    text = str(info.value)
    assert "after 3 attempts" in text
    assert "tasks: Input should be a valid list" in text


async def test_zero_reasks_means_one_attempt() -> None:
    client = ScriptedClient(Script([{"content": "{}"}, {"content": GOOD}]))
    with pytest.raises(InvalidAnswerError, match="after 1 attempt;"):
        await ask_structured(client, REQUEST, parse_plan, max_reasks=0)


async def test_value_error_and_validation_error_from_parse_are_rejections() -> None:
    def strict(text: str) -> int:
        if text == "raw-pydantic":
            Plan.model_validate({"tasks": [{"id": "a", "priority": -1}]})
        value = int(text)  # ValueError for non-numbers
        if value < 0:
            raise InvalidAnswerError("the number must not be negative")
        return value

    spy = Spy()
    client = RecordingClient(
        ScriptedClient(
            Script(
                [
                    {"content": "raw-pydantic"},
                    {"content": "abc"},
                    {"content": "-1"},
                    {"content": "7"},
                ]
            )
        ),
        spy,
    )
    value, responses = await ask_structured(client, REQUEST, strict, max_reasks=3)
    assert value == 7
    assert len(responses) == 4
    assert "tasks[0].priority: Input should be greater than or equal to 1" in (
        spy.requests[1].last_user_message
    )
    assert "invalid literal for int()" in spy.requests[2].last_user_message
    assert "the number must not be negative" in spy.requests[3].last_user_message


def test_format_validation_error_directly() -> None:
    with pytest.raises(ValidationError) as info:
        Task.model_validate({"id": 1, "priority": "high"})
    assert format_validation_error(info.value) == (
        "id: Input should be a valid string (got 1); "
        "priority: Input should be a valid integer, unable to parse string as an integer "
        '(got "high")'
    )


# -- through HTTP: the fake server sees the re-ask -----------------------------------------
async def test_reask_over_http_carries_the_exact_error(fake_llm, closing) -> None:
    srv = fake_llm(
        [
            {"content": "{not json"},
            {"content": '```json\n{"tasks": [{"id": "a"}]}\n```'},
            {"content": GOOD},
        ]
    )
    client = closing(
        OpenAICompatClient(
            model="gpt-4o",
            api_key="test-key",
            base_url=srv.base_url,
            timeout_s=5,
            retry=RetryPolicy(max_retries=0, base_s=0.01, max_s=0.1),
            prices=DEFAULT_PRICES,
        )
    )
    rejections: list[str] = []

    async def on_reject(attempt: int, problem: str) -> None:
        rejections.append(problem)

    plan, responses = await ask_structured(
        client, REQUEST, parse_plan, max_reasks=2, on_reject=on_reject
    )
    assert plan.tasks[0].id == "QL-DEV-001"
    assert len(responses) == 3
    sent = srv.requests
    assert len(sent) == 3
    assert rejections == [
        "the answer is not valid JSON: Expecting property name enclosed in double quotes "
        "at line 1 column 2",
        "tasks[0].priority: Field required",
    ]
    assert rejections[0] in sent[1].last_user_message
    assert sent[1].messages[-2] == {"role": "assistant", "content": "{not json"}
    assert rejections[1] in sent[2].last_user_message
    assert len(sent[2].messages) == len(REQUEST.messages) + 4
    assert all(r.body["response_format"] == {"type": "json_object"} for r in sent)
