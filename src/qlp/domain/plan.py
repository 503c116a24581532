"""The plan: typed tasks and their dependencies, and the rules that make it a valid DAG."""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping, Sequence

from pydantic import BaseModel, ConfigDict, Field

from qlp.domain.ids import TASK_ID_RE, TASK_PREFIX, TaskType


class PlanTask(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1, max_length=32)
    type: TaskType
    title: str = Field(min_length=1, max_length=200)
    description: str = Field(default="", max_length=8000)
    dependencies: list[str] = Field(default_factory=list)
    priority: int = Field(default=3, ge=1, le=5)
    acceptance_criteria: list[str] = Field(default_factory=list)


class Plan(BaseModel):
    model_config = ConfigDict(extra="forbid")

    summary: str = Field(default="", max_length=4000)
    tasks: list[PlanTask] = Field(min_length=1)

    def task(self, task_id: str) -> PlanTask:
        for t in self.tasks:
            if t.id == task_id:
                return t
        raise KeyError(task_id)


class PlanInvalid(ValueError):
    """The precise reason a plan is not acceptable; sent back to the model verbatim."""


def validate_plan(plan: Plan, *, max_tasks: int) -> None:
    """Raise PlanInvalid naming the first problem found, or return when the plan is a DAG."""
    if len(plan.tasks) > max_tasks:
        raise PlanInvalid(
            f"the plan has {len(plan.tasks)} tasks but at most {max_tasks} are allowed; "
            "merge related work into fewer tasks"
        )
    seen: set[str] = set()
    for t in plan.tasks:
        match = TASK_ID_RE.match(t.id)
        if match is None:
            raise PlanInvalid(f"task id {t.id!r} is not of the form QL-<DEV|TST|DOC|INF|ANA>-NNN")
        if match.group(1) != TASK_PREFIX[t.type]:
            raise PlanInvalid(
                f"task {t.id} has type {t.type.value} whose id prefix must be "
                f"QL-{TASK_PREFIX[t.type]}-"
            )
        if t.id in seen:
            raise PlanInvalid(f"task id {t.id} is used more than once")
        seen.add(t.id)
    for t in plan.tasks:
        for dep in t.dependencies:
            if dep not in seen:
                raise PlanInvalid(f"task {t.id} depends on unknown task {dep}")
            if dep == t.id:
                raise PlanInvalid(f"task {t.id} depends on itself")
        if len(set(t.dependencies)) != len(t.dependencies):
            raise PlanInvalid(f"task {t.id} lists a dependency more than once")
    cycle = find_cycle({t.id: t.dependencies for t in plan.tasks})
    if cycle:
        raise PlanInvalid("the dependencies form a cycle: " + " -> ".join(cycle))


def find_cycle(deps: Mapping[str, Sequence[str]]) -> list[str] | None:
    """Return one cycle as a closed path of ids (first == last), or None."""
    white, grey, black = 0, 1, 2
    colour = dict.fromkeys(deps, white)
    for root in sorted(deps):
        if colour[root] != white:
            continue
        stack: list[tuple[str, int]] = [(root, 0)]
        path: list[str] = [root]
        colour[root] = grey
        while stack:
            node, i = stack[-1]
            children = deps.get(node, ())
            if i < len(children):
                stack[-1] = (node, i + 1)
                child = children[i]
                if child not in colour:
                    continue
                if colour[child] == grey:
                    return [*path[path.index(child) :], child]
                if colour[child] == white:
                    colour[child] = grey
                    stack.append((child, 0))
                    path.append(child)
            else:
                colour[node] = black
                stack.pop()
                path.pop()
    return None


def topological_order(tasks: Iterable[PlanTask]) -> list[str]:
    """Dependencies first; ties broken by priority (1 first) then id, so the order is stable."""
    task_list = list(tasks)
    by_id = {t.id: t for t in task_list}
    indegree = {t.id: len(t.dependencies) for t in task_list}
    dependents: dict[str, list[str]] = {t.id: [] for t in task_list}
    for t in task_list:
        for d in t.dependencies:
            dependents[d].append(t.id)
    ready = [(by_id[i].priority, i) for i, n in indegree.items() if n == 0]
    heapq.heapify(ready)
    order: list[str] = []
    while ready:
        _, current = heapq.heappop(ready)
        order.append(current)
        for nxt in dependents[current]:
            indegree[nxt] -= 1
            if indegree[nxt] == 0:
                heapq.heappush(ready, (by_id[nxt].priority, nxt))
    if len(order) != len(task_list):
        raise PlanInvalid("the dependencies form a cycle")
    return order


def transitive_dependents(deps: Mapping[str, Sequence[str]], root: str) -> set[str]:
    """Every task that depends, directly or not, on `root`."""
    dependents: dict[str, list[str]] = {k: [] for k in deps}
    for k, ds in deps.items():
        for d in ds:
            dependents.setdefault(d, []).append(k)
    out: set[str] = set()
    todo = [root]
    while todo:
        for nxt in dependents.get(todo.pop(), []):
            if nxt not in out:
                out.add(nxt)
                todo.append(nxt)
    return out


def transitive_dependencies(deps: Mapping[str, Sequence[str]], root: str) -> list[str]:
    """Every task `root` depends on, nearest first (breadth-first), without repeats."""
    out: list[str] = []
    seen: set[str] = set()
    frontier = list(deps.get(root, ()))
    while frontier:
        nxt: list[str] = []
        for d in frontier:
            if d not in seen:
                seen.add(d)
                out.append(d)
                nxt.extend(deps.get(d, ()))
        frontier = nxt
    return out
