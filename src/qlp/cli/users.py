"""`qlp user`: the accounts of `qlp serve` and their API keys, managed by the local operator.

Whoever runs the CLI has the database, so has full authority; what they do here is still
written to the audit log, as actor `cli:<login name>`.
"""

from __future__ import annotations

import asyncio
import getpass
import sys
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from qlp.auth.base import Role
from qlp.cli.common import (
    audit_cli_action,
    console,
    err_console,
    handle_errors,
    print_json,
    settings,
)
from qlp.cli.safetext import escape
from qlp.errors import UserInputError

if TYPE_CHECKING:  # the rest is imported when a command runs: the CLI starts fast
    from qlp.auth.service import AuthService
    from qlp.engine.wiring import Runtime
    from qlp.store.base import ApiKeyRecord, UserRecord

app = typer.Typer(help="Users of `qlp serve` and their API keys.", no_args_is_help=True)
apikey_app = typer.Typer(help="A user's API keys (for scripts and CI).", no_args_is_help=True)
app.add_typer(apikey_app, name="apikey")

UserArg = Annotated[
    str, typer.Argument(help="The username.", metavar="USERNAME", show_default=False)
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]


def _run(fn: Callable[[Runtime, AuthService], Awaitable[int]]) -> int:
    from qlp.engine.wiring import make_auth, open_runtime

    cfg = settings()

    async def main() -> int:
        async with open_runtime(cfg) as rt:
            return await fn(rt, make_auth(rt.settings, rt.store))

    return asyncio.run(main())


def _user_json(u: UserRecord) -> dict[str, Any]:
    return {
        "id": u.id,
        "username": u.username,
        "role": u.role,
        "disabled": u.disabled,
        "created_at": u.created_at.isoformat(),
    }


def _key_json(k: ApiKeyRecord) -> dict[str, Any]:
    return {
        "id": k.id,
        "name": k.name,
        "prefix": k.prefix,
        "created_at": k.created_at.isoformat(),
        "last_used_at": k.last_used_at.isoformat() if k.last_used_at else None,
        "revoked_at": k.revoked_at.isoformat() if k.revoked_at else None,
    }


def _read_password(from_stdin: bool) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    if not sys.stdin.isatty():
        raise UserInputError(
            "no terminal to ask for the password on; pipe it in with --password-stdin"
        )
    first = getpass.getpass("Password: ")
    if getpass.getpass("Password (again): ") != first:
        raise UserInputError("the two passwords differ; nothing was created")
    return first


@app.command("create", help="Create a user (the password is asked twice, or read from stdin).")
@handle_errors
def user_create(
    username: UserArg,
    role: Annotated[
        Role, typer.Option("--role", help="admin, member (submit and review) or viewer.")
    ] = Role.MEMBER,
    password_stdin: Annotated[
        bool,
        typer.Option("--password-stdin", help="Read the password from the first line of stdin."),
    ] = False,
    as_json: JsonOption = False,
) -> None:
    password = _read_password(password_stdin)

    async def go(rt: Runtime, auth: AuthService) -> int:
        user = await auth.create_user(username, password, role)
        await audit_cli_action(rt, "user.create", user.id, username=user.username, role=user.role)
        if as_json:
            print_json(_user_json(user))
        else:
            console.print(f"created user {user.username} ({user.id}), role {user.role}")
        return 0

    raise typer.Exit(_run(go))


@app.command("list", help="All users.")
@handle_errors
def user_list(as_json: JsonOption = False) -> None:
    async def go(rt: Runtime, auth: AuthService) -> int:
        users = await auth.users.list_users()
        if as_json:
            print_json([_user_json(u) for u in users])
            return 0
        if not users:
            console.print("no users yet; create one with `qlp user create NAME --role admin`")
            return 0
        table = Table(box=None, pad_edge=False)
        for col in ("username", "id", "role", "status", "created"):
            table.add_column(col)
        for u in users:
            table.add_row(
                escape(u.username),
                u.id,
                u.role,
                "disabled" if u.disabled else "active",
                u.created_at.strftime("%Y-%m-%d %H:%M"),
            )
        console.print(table)
        return 0

    raise typer.Exit(_run(go))


def _set_disabled(username: str, disabled: bool) -> int:
    async def go(rt: Runtime, auth: AuthService) -> int:
        user = await auth.user_by_name(username)
        await auth.users.set_disabled(user.id, disabled)
        action = "user.disable" if disabled else "user.enable"
        await audit_cli_action(rt, action, user.id, username=user.username)
        state = "disabled: its tokens and keys stop working" if disabled else "enabled"
        console.print(f"user {user.username} {state}")
        return 0

    return _run(go)


@app.command("disable", help="Lock a user out at once (sessions and API keys included).")
@handle_errors
def user_disable(username: UserArg) -> None:
    raise typer.Exit(_set_disabled(username, True))


@app.command("enable", help="Let a disabled user sign in again.")
@handle_errors
def user_enable(username: UserArg) -> None:
    raise typer.Exit(_set_disabled(username, False))


@apikey_app.command("create", help="Create an API key; it is printed once, never again.")
@handle_errors
def apikey_create(
    username: UserArg,
    name: Annotated[str, typer.Option("--name", help="What the key is for (e.g. 'ci').")],
    as_json: JsonOption = False,
) -> None:
    async def go(rt: Runtime, auth: AuthService) -> int:
        principal = await auth.principal_for(username)
        record, key = await auth.create_api_key(principal, name)
        await audit_cli_action(
            rt, "apikey.create", record.id, username=principal.username, name=name
        )
        if as_json:
            print_json({**_key_json(record), "key": key})
            return 0
        err_console.print(
            f"API key {record.id} ({escape(record.name)}) for {principal.username}; "
            "copy it now, it cannot be shown again:",
            highlight=False,
            soft_wrap=True,
        )
        sys.stdout.write(key + "\n")
        return 0

    raise typer.Exit(_run(go))


@apikey_app.command("list", help="A user's API keys (never the keys themselves).")
@handle_errors
def apikey_list(username: UserArg, as_json: JsonOption = False) -> None:
    async def go(rt: Runtime, auth: AuthService) -> int:
        keys = await auth.list_api_keys(await auth.principal_for(username))
        if as_json:
            print_json([_key_json(k) for k in keys])
            return 0
        if not keys:
            console.print(f"{username} has no API keys")
            return 0
        table = Table(box=None, pad_edge=False)
        for col in ("id", "prefix", "name", "created", "last used", "status"):
            # The id is what `revoke` needs: never wrapped or cut.
            table.add_column(col, no_wrap=col != "name")
        for k in keys:
            table.add_row(
                k.id,
                k.prefix + "...",
                escape(k.name),
                k.created_at.strftime("%Y-%m-%d %H:%M"),
                k.last_used_at.strftime("%Y-%m-%d %H:%M") if k.last_used_at else "never",
                "revoked" if k.revoked_at else "active",
            )
        console.print(table)
        return 0

    raise typer.Exit(_run(go))


@apikey_app.command("revoke", help="Revoke one of a user's API keys; it stops working at once.")
@handle_errors
def apikey_revoke(
    username: UserArg,
    key_id: Annotated[str, typer.Argument(help="The key's id (QLK-...).", show_default=False)],
) -> None:
    async def go(rt: Runtime, auth: AuthService) -> int:
        principal = await auth.principal_for(username)
        # The key must be this user's, even when the user is an admin.
        await auth.revoke_api_key(principal, key_id, own_only=True)
        await audit_cli_action(rt, "apikey.revoke", key_id, username=principal.username)
        console.print(f"API key {key_id} of {principal.username} revoked")
        return 0

    raise typer.Exit(_run(go))
