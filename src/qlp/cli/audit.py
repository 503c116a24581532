"""`qlp audit`: read the audit log and check its hash chain."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Annotated, Any

import typer

from qlp.cli.common import console, err_console, handle_errors, print_json, settings
from qlp.cli.safetext import escape

if TYPE_CHECKING:  # imported when a command runs: the CLI starts fast
    from qlp.store.audit import AuditRecord, AuditStore

app = typer.Typer(help="The audit log of `qlp serve` (who did what, when).", no_args_is_help=True)
JsonOption = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]


def _run(fn: Callable[[AuditStore], Awaitable[int]]) -> int:
    cfg = settings()

    async def main() -> int:
        from qlp.engine.wiring import open_runtime
        from qlp.store.audit import AuditStore

        async with open_runtime(cfg) as rt:
            return await fn(AuditStore(rt.store))

    return asyncio.run(main())


def _json(r: AuditRecord) -> dict[str, Any]:
    return {
        "seq": r.seq,
        "at": r.at.isoformat(),
        "actor": r.actor,
        "action": r.action,
        "resource": r.resource,
        "outcome": r.outcome,
        "status_code": r.status_code,
        "client_ip": r.client_ip,
        "user_agent": r.user_agent,
        "request_id": r.request_id,
        "details": r.details,
        "hash": r.hash,
    }


@app.command(
    "verify",
    help="Check the hash chain: exit 0 when intact, 1 listing each changed or missing row.",
)
@handle_errors
def audit_verify(as_json: JsonOption = False) -> None:
    async def go(audit: AuditStore) -> int:
        result = await audit.verify()
        head = await audit.head()
        if as_json:
            print_json(
                {
                    "ok": result.ok,
                    "rows": result.rows,
                    "problems": result.problems,
                    "head": {"seq": head.last_seq, "hash": head.hash} if head else None,
                }
            )
        elif result.ok:
            console.print(f"audit log intact: {result.rows} rows", highlight=False)
            if head is not None:
                # Kept elsewhere, this line is what detects a rewrite of the whole chain.
                console.print(f"head: row {head.last_seq} {head.hash}", highlight=False)
        else:
            err_console.print(
                f"[bold red]audit log damaged[/] ({result.rows} rows, "
                f"{len(result.problems)} problems):",
                highlight=False,
            )
            for problem in result.problems:
                err_console.print(f"  {escape(problem)}", highlight=False, soft_wrap=True)
        return 0 if result.ok else 1

    raise typer.Exit(_run(go))


@app.command("list", help="The latest entries, oldest first.")
@handle_errors
def audit_list(
    limit: Annotated[int, typer.Option("--limit", min=1, max=10_000, help="How many.")] = 50,
    actor: Annotated[str | None, typer.Option("--actor", help="Only this actor.")] = None,
    action: Annotated[str | None, typer.Option("--action", help="Only this action.")] = None,
    as_json: JsonOption = False,
) -> None:
    async def go(audit: AuditStore) -> int:
        rows = await audit.latest(limit, actor=actor, action=action)
        if as_json:
            print_json([_json(r) for r in rows])
            return 0
        if not rows:
            console.print("the audit log is empty")
        for r in rows:
            where = f" {r.resource}" if r.resource else ""
            code = f" {r.status_code}" if r.status_code is not None else ""
            console.print(
                f"{r.seq:>6}  {r.at:%Y-%m-%d %H:%M:%S}  {escape(r.actor)}  "
                f"{escape(r.action)}{escape(where)}  {r.outcome}{code}",
                highlight=False,
            )
        return 0

    raise typer.Exit(_run(go))
