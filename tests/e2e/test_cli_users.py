"""`qlp user` and `qlp audit` as an operator runs them: separate processes, real database."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest

from qlp.auth.service import AuthService
from qlp.auth.tokens import SigningKeys, TokenService
from qlp.errors import AuthError
from qlp.store.db import connect
from qlp.store.repository import Store
from qlp.store.users import UserStore
from tests.e2e.test_cli import db_rows, qlp_env

PASSWORD = "operator typed this one"


def qlp(*args: str, home: Path, db_url: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "qlp", *args],
        env=qlp_env(home, db_url),
        cwd=home,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _no_traceback(res: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in res.stderr, res.stderr


async def _authenticate(db_url: str, credential: str) -> str:
    engine = await connect(db_url)
    try:
        auth = AuthService(
            UserStore(Store(engine)), TokenService(SigningKeys.parse("t=" + "x" * 40), 60), 60
        )
        return (await auth.authenticate(credential)).username
    finally:
        await engine.dispose()


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cli-users")


def test_user_create_with_password_on_stdin(home: Path, db_url: str) -> None:
    res = qlp(
        "user", "create", "Carol", "--role", "admin", "--password-stdin",
        home=home, db_url=db_url, stdin=PASSWORD + "\n",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "created user carol" in res.stdout
    [(username, role, stored)] = db_rows(
        db_url, "SELECT username, role, password_hash FROM users WHERE username = 'carol'"
    )
    assert (username, role) == ("carol", "admin")
    assert stored.startswith("$argon2id$")
    assert PASSWORD not in stored

    listed = qlp("user", "list", "--json", home=home, db_url=db_url)
    assert listed.returncode == 0, listed.stderr
    users = {u["username"]: u for u in json.loads(listed.stdout)}
    assert users["carol"]["role"] == "admin"
    assert "password_hash" not in users["carol"]


@pytest.mark.parametrize(
    ("args", "stdin", "message"),
    [
        (["user", "create", "dave", "--password-stdin"], "short\n", "at least 10"),
        (["user", "create", "bad name!", "--password-stdin"], PASSWORD + "\n", "invalid username"),
        (["user", "create", "dave", "--role", "root", "--password-stdin"], PASSWORD, "root"),
        # No terminal and no --password-stdin: refuse rather than hang or read garbage.
        (["user", "create", "dave"], PASSWORD + "\n", "--password-stdin"),
        (["user", "apikey", "list", "nobody"], "", "no user named 'nobody'"),
    ],
)
def test_bad_user_input_exits_2_with_one_line(
    args: list[str], stdin: str, message: str, home: Path, db_url: str
) -> None:
    res = qlp(*args, home=home, db_url=db_url, stdin=stdin)
    assert res.returncode == 2, (res.stdout, res.stderr)
    assert message in res.stderr
    _no_traceback(res)
    assert db_rows(db_url, "SELECT count(*) FROM users WHERE username = 'dave'") == [(0,)]


def test_taken_username_exits_2(home: Path, db_url: str) -> None:
    args = ("user", "create", "erin", "--password-stdin")
    assert qlp(*args, home=home, db_url=db_url, stdin=PASSWORD).returncode == 0
    again = qlp(*args, home=home, db_url=db_url, stdin=PASSWORD)
    assert again.returncode == 2
    assert "taken" in again.stderr
    _no_traceback(again)


def test_api_key_create_list_revoke(home: Path, db_url: str) -> None:
    created = qlp(
        "user", "create", "frank", "--role", "member", "--password-stdin",
        home=home, db_url=db_url, stdin=PASSWORD,
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    res = qlp("user", "apikey", "create", "frank", "--name", "ci", home=home, db_url=db_url)
    assert res.returncode == 0, res.stderr
    key = res.stdout.strip()
    assert key.startswith("qlk_")
    assert "cannot be shown again" in res.stderr
    assert asyncio.run(_authenticate(db_url, key)) == "frank"

    listed = qlp("user", "apikey", "list", "frank", "--json", home=home, db_url=db_url)
    [entry] = json.loads(listed.stdout)
    assert entry["name"] == "ci"
    assert key.startswith(entry["prefix"])
    assert key not in listed.stdout
    assert entry["revoked_at"] is None
    # Piped, the table was cut to 80 columns and the id `revoke` needs was wrapped.
    table = qlp("user", "apikey", "list", "frank", home=home, db_url=db_url)
    assert table.returncode == 0, table.stderr
    [row] = [line for line in table.stdout.splitlines() if entry["prefix"] in line]
    assert row.split()[0] == entry["id"], table.stdout

    # Another user's name with frank's key id: not found, and the key keeps working.
    other = qlp("user", "apikey", "revoke", "carol", entry["id"], home=home, db_url=db_url)
    assert other.returncode == 2
    assert "no API key" in other.stderr
    assert asyncio.run(_authenticate(db_url, key)) == "frank"

    revoked = qlp("user", "apikey", "revoke", "frank", entry["id"], home=home, db_url=db_url)
    assert revoked.returncode == 0, revoked.stderr
    with pytest.raises(AuthError):
        asyncio.run(_authenticate(db_url, key))


def test_audit_verify_and_list(home: Path, db_url: str) -> None:
    # The commands above were audited; make sure there is at least one row either way.
    qlp("user", "create", "grace", "--password-stdin", home=home, db_url=db_url, stdin=PASSWORD)
    ok = qlp("audit", "verify", home=home, db_url=db_url)
    assert ok.returncode == 0, ok.stderr
    [(rows,)] = db_rows(db_url, "SELECT count(*) FROM audit_log")
    assert rows >= 1
    assert f"audit log intact: {rows} rows" in ok.stdout

    listed = qlp("audit", "list", "--json", "--action", "user.create", home=home, db_url=db_url)
    entries = json.loads(listed.stdout)
    assert any(e["details"].get("username") == "grace" for e in entries)
    assert all(e["actor"].startswith("cli:") for e in entries)

    db_rows(db_url, "UPDATE audit_log SET outcome = 'denied' WHERE seq = 1 RETURNING seq")
    damaged = qlp("audit", "verify", home=home, db_url=db_url)
    assert damaged.returncode == 1
    assert "row 1 was changed" in damaged.stderr
    _no_traceback(damaged)
