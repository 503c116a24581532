"""AuthService over the real store (embedded PostgreSQL): login, refresh rotation and reuse,
logout, API keys, disabled users, and who may revoke what."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text

from qlp.auth.base import Principal, Role, TokenPair
from qlp.auth.service import AuthService
from qlp.auth.tokens import SigningKeys, TokenService, token_digest
from qlp.errors import (
    AuthError,
    ConflictError,
    NotFoundError,
    PermissionDeniedError,
    UserInputError,
)
from qlp.store.db import connect
from qlp.store.repository import Store
from qlp.store.users import UserStore

PASSWORD = "a long enough password"
KEYS = SigningKeys.parse("test=" + "k" * 64)


@pytest.fixture
async def store(db_url: str) -> AsyncIterator[Store]:
    engine = await connect(db_url)
    try:
        yield Store(engine)
    finally:
        await engine.dispose()


@pytest.fixture
def auth(store: Store) -> AuthService:
    return AuthService(UserStore(store), TokenService(KEYS, 900), refresh_ttl_s=3600)


def _name(stem: str = "user") -> str:
    return f"{stem}-{secrets.token_hex(4)}"


async def _login(auth: AuthService, username: str) -> tuple[Principal, TokenPair]:
    return await auth.login(username, PASSWORD, client_ip="127.0.0.1", user_agent="pytest")


async def _refresh(auth: AuthService, token: str) -> TokenPair:
    return await auth.refresh(token, client_ip="127.0.0.1", user_agent="pytest")


async def test_create_user_normalises_and_refuses_duplicates(auth: AuthService) -> None:
    name = _name("Alice")
    user = await auth.create_user(f"  {name} ", PASSWORD, Role.MEMBER)
    assert user.username == name.lower()
    assert user.id.startswith("QLU-")
    assert user.role == "member"
    assert user.password_hash.startswith("$argon2id$")
    assert PASSWORD not in repr(user)
    assert user.password_hash not in repr(user)
    with pytest.raises(ConflictError, match="taken"):
        await auth.create_user(name.upper(), PASSWORD, Role.VIEWER)
    with pytest.raises(UserInputError, match="invalid username"):
        await auth.create_user("-bad", PASSWORD, Role.MEMBER)
    with pytest.raises(UserInputError, match="invalid username"):
        await auth.create_user("has space", PASSWORD, Role.MEMBER)
    with pytest.raises(UserInputError, match="at least 10"):
        await auth.create_user(_name(), "short", Role.MEMBER)
    listed = [u.username for u in await auth.users.list_users()]
    assert name.lower() in listed


async def test_login_issues_working_tokens(auth: AuthService, store: Store) -> None:
    name = _name()
    user = await auth.create_user(name, PASSWORD, Role.ADMIN)
    principal, pair = await auth.login(
        name.upper(), PASSWORD, client_ip="10.0.0.9", user_agent="curl/8"
    )
    assert principal.user_id == user.id
    assert principal.role is Role.ADMIN
    assert principal.session_id is not None
    assert pair.expires_in == 900
    assert pair.token_type == "bearer"
    assert pair.refresh_token.startswith("qlr_")
    assert pair.access_token not in repr(pair)
    assert await auth.authenticate(pair.access_token) == principal
    session = await auth.users.get_session(principal.session_id)
    assert session is not None
    assert session.family_id == session.id
    assert (session.client_ip, session.user_agent) == ("10.0.0.9", "curl/8")
    # Only the digest of the refresh token is in the database.
    async with store.autocommit.connect() as conn:
        stored = (
            await conn.execute(
                text("SELECT token_hash FROM user_sessions WHERE id = :i"),
                {"i": principal.session_id},
            )
        ).scalar_one()
        leaked = (
            await conn.execute(
                text("SELECT count(*) FROM user_sessions WHERE token_hash = :t"),
                {"t": pair.refresh_token},
            )
        ).scalar_one()
    assert stored == token_digest(pair.refresh_token)
    assert leaked == 0


async def test_wrong_password_unknown_user_and_disabled_user_look_the_same(
    auth: AuthService,
) -> None:
    name = _name()
    user = await auth.create_user(name, PASSWORD, Role.MEMBER)
    messages = []
    for username, password in [
        (name, "not the password"),
        (_name("ghost"), PASSWORD),
        ("!!", PASSWORD),
    ]:
        with pytest.raises(AuthError) as info:
            await auth.login(username, password, client_ip=None, user_agent=None)
        messages.append(str(info.value))
    await auth.users.set_disabled(user.id, True)
    with pytest.raises(AuthError) as info:
        await _login(auth, name)
    messages.append(str(info.value))
    assert set(messages) == {"invalid username or password"}


async def test_disabled_user_is_locked_out_of_existing_tokens_and_keys(
    auth: AuthService,
) -> None:
    name = _name()
    await auth.create_user(name, PASSWORD, Role.MEMBER)
    principal, pair = await _login(auth, name)
    _, key = await auth.create_api_key(principal, "ci")
    assert (await auth.authenticate(key)).user_id == principal.user_id
    await auth.users.set_disabled(principal.user_id, True)
    for credential in (pair.access_token, key):
        with pytest.raises(AuthError):
            await auth.authenticate(credential)
    with pytest.raises(AuthError):
        await _refresh(auth, pair.refresh_token)
    await auth.users.set_disabled(principal.user_id, False)
    assert (await auth.authenticate(key)).user_id == principal.user_id


async def test_role_change_takes_effect_on_the_next_request(auth: AuthService) -> None:
    name = _name()
    await auth.create_user(name, PASSWORD, Role.ADMIN)
    principal, pair = await _login(auth, name)
    await auth.users.set_role(principal.user_id, Role.VIEWER)
    demoted = await auth.authenticate(pair.access_token)
    assert demoted.role is Role.VIEWER
    assert not demoted.can_write


async def test_refresh_rotates_and_the_new_pair_works(auth: AuthService) -> None:
    name = _name()
    await auth.create_user(name, PASSWORD, Role.MEMBER)
    principal, first = await _login(auth, name)
    second = await _refresh(auth, first.refresh_token)
    assert second.refresh_token != first.refresh_token
    assert second.access_token != first.access_token
    now = await auth.authenticate(second.access_token)
    assert now.user_id == principal.user_id
    assert now.session_id != principal.session_id
    third = await _refresh(auth, second.refresh_token)
    # All in one family; only the newest is not rotated.
    assert principal.session_id is not None
    family = await auth.users.family_sessions(principal.session_id)
    assert len(family) == 3
    assert [s.rotated_at is None for s in family] == [False, False, True]
    assert (await auth.authenticate(third.access_token)).user_id == principal.user_id


async def test_reusing_a_rotated_refresh_token_revokes_the_whole_family(
    auth: AuthService,
) -> None:
    name = _name()
    await auth.create_user(name, PASSWORD, Role.MEMBER)
    principal, first = await _login(auth, name)
    second = await _refresh(auth, first.refresh_token)
    third = await _refresh(auth, second.refresh_token)
    # Someone replays the first refresh token (stolen earlier).
    with pytest.raises(AuthError):
        await _refresh(auth, first.refresh_token)
    # The newest tokens of that login stop working too: refresh and access.
    with pytest.raises(AuthError):
        await _refresh(auth, third.refresh_token)
    for pair in (first, second, third):
        with pytest.raises(AuthError):
            await auth.authenticate(pair.access_token)
    assert principal.session_id is not None
    family = await auth.users.family_sessions(principal.session_id)
    assert {s.revoked_reason for s in family} == {"refresh token reused"}
    # Another login of the same user is a different family and keeps working.
    _, other = await _login(auth, name)
    assert (await auth.authenticate(other.access_token)).user_id == principal.user_id


async def test_concurrent_refreshes_with_one_token_only_one_wins(auth: AuthService) -> None:
    name = _name()
    await auth.create_user(name, PASSWORD, Role.MEMBER)
    principal, pair = await _login(auth, name)
    results = await asyncio.gather(
        *(_refresh(auth, pair.refresh_token) for _ in range(8)), return_exceptions=True
    )
    winners = [r for r in results if isinstance(r, TokenPair)]
    losers = [r for r in results if isinstance(r, AuthError)]
    assert len(winners) == 1, results
    assert len(losers) == 7, results
    assert principal.session_id is not None
    family = await auth.users.family_sessions(principal.session_id)
    assert len(family) == 2  # the login's session and exactly one successor
    # A second presentation of the token is reuse: the family is revoked, winner included.
    assert all(s.revoked_at is not None for s in family)
    with pytest.raises(AuthError):
        await _refresh(auth, winners[0].refresh_token)


async def test_rotate_session_is_atomic_in_the_store(auth: AuthService) -> None:
    """The store alone: of concurrent rotations of one session exactly one gets a row."""
    user = await auth.create_user(_name(), PASSWORD, Role.MEMBER)
    expires = datetime.now(UTC) + timedelta(hours=1)
    session = await auth.users.create_session(user.id, None, "0" * 64, expires, None, None)
    results = await asyncio.gather(
        *(
            auth.users.rotate_session(
                session.id,
                token_hash=f"{n:064x}",
                expires_at=expires,
                client_ip=None,
                user_agent=None,
            )
            for n in range(1, 9)
        )
    )
    made = [r for r in results if r is not None]
    assert len(made) == 1
    assert made[0].family_id == session.id
    old = await auth.users.get_session(session.id)
    assert old is not None
    assert old.rotated_at is not None


async def test_expired_revoked_and_unknown_refresh_tokens_are_refused(
    auth: AuthService, store: Store
) -> None:
    name = _name()
    await auth.create_user(name, PASSWORD, Role.MEMBER)
    principal, pair = await _login(auth, name)
    for bogus in ("qlr_" + secrets.token_urlsafe(32), "", pair.access_token):
        with pytest.raises(AuthError):
            await _refresh(auth, bogus)
    async with store.engine.begin() as conn:
        await conn.execute(
            text("UPDATE user_sessions SET expires_at = now() - interval '1 second' WHERE id = :i"),
            {"i": principal.session_id},
        )
    with pytest.raises(AuthError):
        await _refresh(auth, pair.refresh_token)
    # Expiry is not reuse: the session was not rotated, and not revoked either.
    assert principal.session_id is not None
    session = await auth.users.get_session(principal.session_id)
    assert session is not None
    assert session.rotated_at is None
    assert session.revoked_at is None


async def test_logout_ends_access_and_refresh_at_once(auth: AuthService) -> None:
    name = _name()
    await auth.create_user(name, PASSWORD, Role.MEMBER)
    _, first = await _login(auth, name)
    second = await _refresh(auth, first.refresh_token)
    principal = await auth.authenticate(second.access_token)
    _, elsewhere = await _login(auth, name)  # another device
    await auth.logout(principal)
    for pair in (first, second):
        with pytest.raises(AuthError):
            await auth.authenticate(pair.access_token)  # not yet expired, still refused
    with pytest.raises(AuthError):
        await _refresh(auth, second.refresh_token)
    assert (await auth.authenticate(elsewhere.access_token)).user_id == principal.user_id


async def test_access_token_is_bound_to_its_session_user(auth: AuthService) -> None:
    a, b = _name("a"), _name("b")
    await auth.create_user(a, PASSWORD, Role.MEMBER)
    user_b = await auth.create_user(b, PASSWORD, Role.ADMIN)
    principal_a, _ = await _login(auth, a)
    assert principal_a.session_id is not None
    # A validly signed token that names b's id with a's session is refused.
    forged, _ = auth.tokens.issue_access(user_b.id, "admin", principal_a.session_id)
    with pytest.raises(AuthError):
        await auth.authenticate(forged)
    # ... as is one naming a session that does not exist.
    ghost, _ = auth.tokens.issue_access(user_b.id, "admin", "QLS-NOPE")
    with pytest.raises(AuthError):
        await auth.authenticate(ghost)


async def test_api_key_lifecycle(auth: AuthService, store: Store) -> None:
    name = _name()
    await auth.create_user(name, PASSWORD, Role.MEMBER)
    principal, _ = await _login(auth, name)
    record, key = await auth.create_api_key(principal, "  laptop  ")
    assert key.startswith("qlk_")
    assert record.name == "laptop"
    assert record.prefix == key[:12]
    assert record.id.startswith("QLK-")
    assert record.last_used_at is None
    by_key = await auth.authenticate(key)
    assert by_key == Principal(
        user_id=principal.user_id,
        username=principal.username,
        role=Role.MEMBER,
        api_key_id=record.id,
    )
    [listed] = await auth.list_api_keys(principal)
    assert listed.id == record.id
    assert listed.last_used_at is not None
    async with store.autocommit.connect() as conn:
        plain = (
            await conn.execute(
                text("SELECT count(*) FROM api_keys WHERE key_hash = :k OR prefix = :k"),
                {"k": key},
            )
        ).scalar_one()
    assert plain == 0
    # A key cannot mint keys, and a key has no session to log out of.
    with pytest.raises(PermissionDeniedError):
        await auth.create_api_key(by_key, "child")
    with pytest.raises(UserInputError):
        await auth.logout(by_key)
    await auth.revoke_api_key(principal, record.id)
    with pytest.raises(AuthError):
        await auth.authenticate(key)
    await auth.revoke_api_key(principal, record.id)  # again: harmless
    with pytest.raises(AuthError):
        await auth.authenticate("qlk_" + secrets.token_urlsafe(32))
    with pytest.raises(UserInputError):
        await auth.create_api_key(principal, "   ")


async def test_member_cannot_revoke_another_users_key_but_admin_can(auth: AuthService) -> None:
    owner, intruder, admin = _name("owner"), _name("intruder"), _name("admin")
    await auth.create_user(owner, PASSWORD, Role.MEMBER)
    await auth.create_user(intruder, PASSWORD, Role.MEMBER)
    await auth.create_user(admin, PASSWORD, Role.ADMIN)
    owner_p, _ = await _login(auth, owner)
    intruder_p, _ = await _login(auth, intruder)
    admin_p, _ = await _login(auth, admin)
    record, key = await auth.create_api_key(owner_p, "ci")
    with pytest.raises(NotFoundError):
        await auth.revoke_api_key(intruder_p, record.id)
    assert await auth.list_api_keys(intruder_p) == []
    assert (await auth.authenticate(key)).user_id == owner_p.user_id  # still works
    await auth.revoke_api_key(admin_p, record.id)
    with pytest.raises(AuthError):
        await auth.authenticate(key)
    with pytest.raises(NotFoundError):
        await auth.revoke_api_key(admin_p, "QLK-DOES-NOT-EXIST")


async def test_deleting_a_user_removes_sessions_and_keys(auth: AuthService, store: Store) -> None:
    name = _name()
    await auth.create_user(name, PASSWORD, Role.MEMBER)
    principal, pair = await _login(auth, name)
    _, key = await auth.create_api_key(principal, "ci")
    async with store.engine.begin() as conn:
        await conn.execute(text("DELETE FROM users WHERE id = :i"), {"i": principal.user_id})
    for credential in (pair.access_token, key):
        with pytest.raises(AuthError):
            await auth.authenticate(credential)
    assert principal.session_id is not None
    assert await auth.users.get_session(principal.session_id) is None
