"""What an agent sees of its dependencies' files, within a token budget."""

from __future__ import annotations

from dataclasses import dataclass, field


def estimate_tokens(text: str) -> int:
    """A deliberately simple estimate (about four characters a token) used only for budgets."""
    return max(1, len(text) // 4)


@dataclass(frozen=True)
class ContextFile:
    path: str
    task_id: str
    content: str


@dataclass
class DependencyContext:
    included: list[ContextFile] = field(default_factory=list)
    omitted: list[ContextFile] = field(default_factory=list)

    def render(self) -> str:
        if not self.included and not self.omitted:
            return "This task has no dependencies; there are no files from other tasks."
        lines = ["Files produced by the tasks this one depends on:"]
        for f in self.included:
            lines.append(f"=== {f.path} (from {f.task_id}) ===")
            lines.append(f.content.rstrip("\n"))
        if self.omitted:
            names = ", ".join(f"{f.path} ({f.task_id})" for f in self.omitted)
            lines.append(
                f"[{len(self.omitted)} file(s) were left out to stay within the context "
                f"budget: {names}. They exist in the project; do not rewrite them.]"
            )
        return "\n".join(lines)


def select_context(files: list[ContextFile], budget_tokens: int) -> DependencyContext:
    """Smallest files first so the budget covers as many files as possible; the largest go."""
    ctx = DependencyContext()
    used = 0
    for f in sorted(files, key=lambda f: (len(f.content), f.path)):
        cost = estimate_tokens(f.content) + estimate_tokens(f.path) + 8
        if used + cost <= budget_tokens:
            ctx.included.append(f)
            used += cost
        else:
            ctx.omitted.append(f)
    ctx.included.sort(key=lambda f: f.path)
    ctx.omitted.sort(key=lambda f: f.path)
    return ctx
