"""One agent run: the task prompt in, a checked set of files out (nothing written here)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from string import Template

from qlp.agents.context import DependencyContext
from qlp.domain.artifacts import AgentOutput, FileLimits, FileOut, PathRuleError, check_output
from qlp.domain.ids import TaskType
from qlp.domain.plan import Plan, PlanTask
from qlp.errors import InvalidAnswerError
from qlp.llm.base import LLMClient, LLMRequest, Message
from qlp.llm.structured import ask_structured, parse_json_model

_PROMPTS = Path(__file__).parent / "prompts"


def _load(name: str) -> str:
    return (_PROMPTS / f"{name}.txt").read_text(encoding="utf-8").strip()


SYSTEM_PROMPT = _load("system")
TASK_TEMPLATE = Template(_load("task"))
TYPE_INSTRUCTIONS: dict[TaskType, str] = {t: _load(t.value) for t in TaskType}


@dataclass(frozen=True)
class AgentSettings:
    limits: FileLimits
    max_reasks: int
    max_output_tokens: int
    temperature: float


@dataclass(frozen=True)
class AgentResult:
    files: list[FileOut]
    notes: str


def plan_outline(plan: Plan) -> str:
    lines = []
    for t in plan.tasks:
        deps = f" (after {', '.join(t.dependencies)})" if t.dependencies else ""
        lines.append(f"- {t.id} [{t.type.value}] {t.title}{deps}")
    return "\n".join(lines)


def build_task_prompt(
    intent_text: str, plan: Plan, task: PlanTask, context: DependencyContext, feedback: str = ""
) -> str:
    criteria = "\n".join(f"- {c}" for c in task.acceptance_criteria) or "- (none given)"
    prompt = TASK_TEMPLATE.substitute(
        intent=intent_text.strip(),
        plan=plan_outline(plan),
        task_id=task.id,
        task_type=task.type.value,
        title=task.title,
        description=task.description or "(no further description)",
        criteria=criteria,
        type_instructions=TYPE_INSTRUCTIONS[task.type],
        context=context.render(),
    )
    if feedback:
        prompt += f"\n\nFeedback to address in this version:\n{feedback.strip()}"
    return prompt


async def run_agent(
    client: LLMClient,
    settings: AgentSettings,
    intent_text: str,
    plan: Plan,
    task: PlanTask,
    context: DependencyContext,
    *,
    feedback: str = "",
    on_reject: Callable[[int, str], Awaitable[None]] | None = None,
) -> AgentResult:
    """Ask for the task's files; an unsafe or malformed answer is re-asked, then refused."""

    def parse(text: str) -> AgentResult:
        output = parse_json_model(text, AgentOutput)
        try:
            files = check_output(output, settings.limits)
        except PathRuleError as exc:
            raise InvalidAnswerError(str(exc)) from None
        return AgentResult(files=files, notes=output.notes)

    request = LLMRequest(
        messages=(
            Message("system", SYSTEM_PROMPT),
            Message("user", build_task_prompt(intent_text, plan, task, context, feedback)),
        ),
        max_tokens=settings.max_output_tokens,
        temperature=settings.temperature,
        json_mode=True,
        purpose=f"task:{task.id}",
    )
    result, _ = await ask_structured(
        client, request, parse, max_reasks=settings.max_reasks, on_reject=on_reject
    )
    return result
