"""Intent -> Plan: ask the model, validate the answer as a DAG, re-ask with the exact problem."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from string import Template

from qlp.domain.plan import Plan, PlanInvalid, topological_order, validate_plan
from qlp.errors import InvalidAnswerError, PlanError
from qlp.llm.base import LLMClient, LLMRequest, Message
from qlp.llm.structured import ask_structured, parse_json_model

_PROMPTS = Path(__file__).parent / "prompts"
SYSTEM_PROMPT = (_PROMPTS / "system.txt").read_text(encoding="utf-8")
PLAN_TEMPLATE = Template((_PROMPTS / "plan.txt").read_text(encoding="utf-8"))


@dataclass(frozen=True)
class PlannerLimits:
    max_tasks: int
    max_reasks: int
    max_output_tokens: int
    temperature: float


@dataclass(frozen=True)
class PlannedIntent:
    plan: Plan
    order: list[str]


def build_plan_request(intent_text: str, limits: PlannerLimits) -> LLMRequest:
    user = PLAN_TEMPLATE.substitute(intent=intent_text.strip(), max_tasks=limits.max_tasks)
    return LLMRequest(
        messages=(Message("system", SYSTEM_PROMPT), Message("user", user)),
        max_tokens=limits.max_output_tokens,
        temperature=limits.temperature,
        json_mode=True,
        purpose="plan",
    )


async def make_plan(
    client: LLMClient,
    intent_text: str,
    limits: PlannerLimits,
    on_reject: Callable[[int, str], Awaitable[None]] | None = None,
) -> PlannedIntent:
    """Return a valid plan, or raise PlanError with the last reason the plan was refused."""

    def parse(text: str) -> Plan:
        plan = parse_json_model(text, Plan)
        try:
            validate_plan(plan, max_tasks=limits.max_tasks)
        except PlanInvalid as exc:
            raise InvalidAnswerError(str(exc)) from None
        return plan

    try:
        plan, _ = await ask_structured(
            client,
            build_plan_request(intent_text, limits),
            parse,
            max_reasks=limits.max_reasks,
            on_reject=on_reject,
        )
    except InvalidAnswerError as exc:
        raise PlanError(f"the planner did not produce a valid plan: {exc.message}") from None
    return PlannedIntent(plan=plan, order=topological_order(plan.tasks))
