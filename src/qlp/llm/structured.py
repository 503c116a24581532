"""Asking for JSON and insisting on it: parse, and on rejection re-ask with the exact error.

The rejection text is sent back to the model, so it is short and precise: a JSON position or
a field path and what is wrong there.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Awaitable, Callable
from typing import TypeVar

from pydantic import BaseModel, ValidationError

from qlp.errors import BudgetExceededError, InvalidAnswerError
from qlp.llm.base import LLMClient, LLMRequest, LLMResponse, Message

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)

_FENCE = re.compile(r"\A```[ \t]*(?:json|JSON)?[ \t]*\r?\n(?P<body>.*?)\r?\n?```\Z", re.DOTALL)
_MAX_ERRORS = 8
_MAX_INPUT_SHOWN = 60

REASK_TEMPLATE = (
    "Your previous answer was rejected: {problem}\n"
    "Reply again with the corrected JSON only, with no explanation before or after it."
)


def strip_json_fence(text: str) -> str:
    """The inside of a ```json (or bare ```) fence enclosing the whole text, else the text."""
    stripped = text.strip()
    match = _FENCE.match(stripped)
    return match.group("body").strip() if match else stripped


def _location(loc: tuple[int | str, ...]) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else str(part)
    return path or "(top level)"


def format_validation_error(exc: ValidationError) -> str:
    """``field.path: message`` for each problem (the first few), joined with '; '."""
    problems: list[str] = []
    errors = exc.errors(include_url=False)
    for err in errors[:_MAX_ERRORS]:
        where = _location(tuple(err.get("loc", ())))
        message = err.get("msg", "invalid value")
        if err.get("type") not in {"missing", "extra_forbidden"} and "input" in err:
            shown = json.dumps(err["input"], default=str)
            if len(shown) <= _MAX_INPUT_SHOWN:
                message += f" (got {shown})"
        problems.append(f"{where}: {message}")
    if len(errors) > _MAX_ERRORS:
        problems.append(f"and {len(errors) - _MAX_ERRORS} more problems")
    return "; ".join(problems)


def describe_rejection(exc: Exception) -> str:
    """A one-line account of why an answer was rejected, fit to send back to the model."""
    if isinstance(exc, ValidationError):
        return format_validation_error(exc)
    if isinstance(exc, json.JSONDecodeError):
        return f"the answer is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
    text = str(exc).strip()
    return text or type(exc).__name__


def parse_json_model(text: str, model_cls: type[M]) -> M:
    """Validate a JSON answer (optionally fenced) as `model_cls`; InvalidAnswerError if not."""
    body = strip_json_fence(text)
    if not body:
        raise InvalidAnswerError("the answer is empty; a JSON object was expected")
    try:
        data = json.loads(body)
    except json.JSONDecodeError as exc:
        raise InvalidAnswerError(describe_rejection(exc)) from None
    try:
        return model_cls.model_validate(data)
    except ValidationError as exc:
        raise InvalidAnswerError(format_validation_error(exc)) from None


def _real_cause(exc: BudgetExceededError, parse: Callable[[str], object]) -> BudgetExceededError:
    """The answer that went over the budget can be wrong in itself (a 10,000-task plan, a
    50 MB file): that is the cause to name, before the budget it used up."""
    response = exc.response
    if not isinstance(response, LLMResponse):
        return exc
    try:
        parse(response.content)
    except (InvalidAnswerError, ValueError) as problem:  # ValidationError is a ValueError
        named = BudgetExceededError(
            f"the model's answer was invalid: {describe_rejection(problem)} (and it used up "
            f"the token budget, so it was not asked again: {exc})"
        )
        named.response = response
        return named
    return exc


async def ask_structured(
    client: LLMClient,
    request: LLMRequest,
    parse: Callable[[str], T],
    *,
    max_reasks: int,
    on_reject: Callable[[int, str], Awaitable[None]] | None = None,
) -> tuple[T, list[LLMResponse]]:
    """Ask, parse, and re-ask at most `max_reasks` times with the rejection quoted.

    `parse` raises InvalidAnswerError, pydantic's ValidationError or ValueError to reject an
    answer. Returns the parsed value and every response received (for usage accounting).
    `on_reject(attempt, problem)` is awaited after each rejected attempt (1-based) that will
    be re-asked.
    """
    if max_reasks < 0:
        raise ValueError("max_reasks must be >= 0")
    messages = list(request.messages)
    responses: list[LLMResponse] = []
    while True:
        try:
            response = await client.complete(dataclasses.replace(request, messages=tuple(messages)))
        except BudgetExceededError as exc:
            raise _real_cause(exc, parse) from None
        responses.append(response)
        try:
            return parse(response.content), responses
        except (InvalidAnswerError, ValueError) as exc:  # ValidationError is a ValueError
            problem = describe_rejection(exc)
        attempt = len(responses)
        if attempt > max_reasks:
            tries = "1 attempt" if attempt == 1 else f"{attempt} attempts"
            raise InvalidAnswerError(
                f"the model's answer was still invalid after {tries}; last problem: {problem}"
            )
        if on_reject is not None:
            await on_reject(attempt, problem)
        # Anthropic refuses empty assistant turns, so an empty answer is shown as such.
        messages.append(Message(role="assistant", content=response.content or "(empty answer)"))
        messages.append(Message(role="user", content=REASK_TEMPLATE.format(problem=problem)))
