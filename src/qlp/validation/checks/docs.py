"""Docs: the required files exist and are not empty; relative links in Markdown resolve.

Checked inside the sandbox by sandboxed/inspect_files.py. With only_files, the required
files are still checked (they belong to the project), links only in the Markdown in scope.
"""

from __future__ import annotations

from dataclasses import dataclass

from qlp.domain.findings import Category, CheckResult, Finding, Severity
from qlp.validation.checks.base import Context, error, not_applicable, not_run, outcome
from qlp.validation.checks.parse import ParseOutcome
from qlp.validation.kinds import Kind


@dataclass(frozen=True)
class DocsFacts:
    """What the docs score is computed from."""

    required_total: int
    required_ok: int
    links_total: int
    links_ok: int


def docs_check(ctx: Context, parsed: ParseOutcome) -> tuple[CheckResult, DocsFacts | None]:
    name, tool = "docs", "qlp-docs"
    files = tuple(ctx.config.required_docs) + ctx.inventory.files(Kind.MARKDOWN)
    if not files:
        return not_applicable(name, tool), None
    if parsed.failure is not None:
        if not ctx.tools.has("python"):
            return not_run(name, tool, files, parsed.failure), None
        return error(name, tool, files, parsed.failure, parsed.duration_s), None
    required = parsed.docs.get("required", {})
    links = [link for link in parsed.docs.get("links", []) if isinstance(link, dict)]
    found: list[Finding] = []
    for path, state in sorted(required.items()):
        if state != "ok":
            found.append(
                Finding(
                    tool=tool,
                    rule_id=f"required-file-{state}",
                    severity=Severity.MEDIUM,
                    path=path,
                    line=None,
                    message=f"required documentation file {path} is {state}",
                    category=Category.DOCS,
                )
            )
    for link in links:
        if not link.get("ok"):
            where = "points outside the project" if not link.get("inside") else "does not exist"
            found.append(
                Finding(
                    tool=tool,
                    rule_id="broken-link",
                    severity=Severity.LOW,
                    path=str(link.get("path", "")),
                    line=link.get("line") if isinstance(link.get("line"), int) else None,
                    message=f"relative link {str(link.get('target'))!r} {where}",
                    category=Category.DOCS,
                )
            )
    facts = DocsFacts(
        required_total=len(required),
        required_ok=sum(1 for s in required.values() if s == "ok"),
        links_total=len(links),
        links_ok=sum(1 for link in links if link.get("ok")),
    )
    detail = (
        f"{facts.required_ok}/{facts.required_total} required file(s) present, "
        f"{facts.links_ok}/{facts.links_total} relative link(s) resolve"
    )
    return outcome(name, tool, files, found, parsed.duration_s, detail), facts
