"""Users, their sessions (one row per refresh token) and their API keys.

Only digests of refresh tokens and API keys are stored (sha256 hex, see auth/tokens.py);
passwords only as argon2id hashes. This module stores and finds; the rules (who may log in,
what a reused refresh token means) are in auth/service.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import Row, Select, func, insert, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from qlp.domain.ids import new_api_key_id, new_session_id, new_user_id
from qlp.errors import ConflictError, NotFoundError
from qlp.store import schema as t
from qlp.store.base import ApiKeyRecord, SessionRecord, UserRecord, from_row
from qlp.store.db import lock_key
from qlp.store.repository import Store, utcnow

__all__ = ["ApiKeyRecord", "SessionRecord", "UserRecord", "UserStore"]

# last_used_at is written at most this often per key, not on every request.
TOUCH_INTERVAL = timedelta(seconds=60)


def _user(r: Row[Any]) -> UserRecord:
    return from_row(UserRecord, r)


def _session(r: Row[Any]) -> SessionRecord:
    return from_row(SessionRecord, r)


def _api_key(r: Row[Any]) -> ApiKeyRecord:
    return from_row(ApiKeyRecord, r)


async def _lock_family(conn: AsyncConnection, family_id: str) -> None:
    """Rotation and family revocation of one family run one at a time. Without this, a
    revocation that starts while a rotation is inserting the next session would not see that
    new row (its snapshot predates it), and the new session would survive the revocation."""
    key = lock_key(f"qlp-session-family:{family_id}")
    await conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": key})


R = TypeVar("R")


@dataclass(frozen=True)
class SessionUser:
    session_id: str
    user_id: str
    username: str
    role: str
    disabled: bool
    revoked: bool


# Plain SQL (run with exec_driver_sql): compiling a statement per request cost more than it.
_SESSION_USER = (
    "SELECT s.id, s.user_id, s.revoked_at, u.username, u.role, u.disabled "
    "FROM user_sessions s JOIN users u ON u.id = s.user_id WHERE s.id = %(sid)s"
)


class UserStore:
    def __init__(self, store: Store) -> None:
        self.store = store

    async def _first(self, record: type[R], query: Select[Any]) -> R | None:
        async with self.store.autocommit.connect() as conn:
            row = (await conn.execute(query)).first()
        return from_row(record, row) if row is not None else None

    async def _all(self, record: type[R], query: Select[Any]) -> list[R]:
        async with self.store.autocommit.connect() as conn:
            return [from_row(record, r) for r in await conn.execute(query)]

    # -- users -----------------------------------------------------------------------------
    async def create_user(self, username: str, password_hash: str, role: str) -> UserRecord:
        """`username` as given (the service lower-cases and checks it); ConflictError when
        it is taken."""
        values = {
            "id": new_user_id(),
            "username": username,
            "password_hash": password_hash,
            "role": str(role),
            "created_at": utcnow(),
            "disabled": False,
        }
        try:
            async with self.store.engine.begin() as conn:
                row = (
                    await conn.execute(insert(t.users).values(**values).returning(t.users))
                ).one()
        except IntegrityError as exc:
            if "uq_users_username" in str(exc.orig):
                raise ConflictError(f"the username {username!r} is taken") from None
            raise
        return _user(row)

    async def get_user(self, user_id: str) -> UserRecord:
        found = await self._first(UserRecord, select(t.users).where(t.users.c.id == user_id))
        if found is None:
            raise NotFoundError(f"no user with id {user_id}")
        return found

    async def find_by_username(self, username: str) -> UserRecord | None:
        query = select(t.users).where(t.users.c.username == username.lower())
        return await self._first(UserRecord, query)

    async def list_users(self) -> list[UserRecord]:
        return await self._all(UserRecord, select(t.users).order_by(t.users.c.username))

    async def set_disabled(self, user_id: str, disabled: bool) -> UserRecord:
        """Disable (or enable again) an account. A disabled user's sessions and keys stop
        working at once: authentication checks the flag on every request."""
        async with self.store.engine.begin() as conn:
            row = (
                await conn.execute(
                    update(t.users)
                    .where(t.users.c.id == user_id)
                    .values(disabled=disabled)
                    .returning(t.users)
                )
            ).first()
        if row is None:
            raise NotFoundError(f"no user with id {user_id}")
        return _user(row)

    async def set_role(self, user_id: str, role: str) -> UserRecord:
        async with self.store.engine.begin() as conn:
            row = (
                await conn.execute(
                    update(t.users)
                    .where(t.users.c.id == user_id)
                    .values(role=str(role))
                    .returning(t.users)
                )
            ).first()
        if row is None:
            raise NotFoundError(f"no user with id {user_id}")
        return _user(row)

    async def set_password_hash(self, user_id: str, password_hash: str) -> None:
        async with self.store.engine.begin() as conn:
            await conn.execute(
                update(t.users).where(t.users.c.id == user_id).values(password_hash=password_hash)
            )

    # -- sessions --------------------------------------------------------------------------
    async def create_session(
        self,
        user_id: str,
        family_id: str | None,
        token_hash: str,
        expires_at: datetime,
        client_ip: str | None,
        user_agent: str | None,
    ) -> SessionRecord:
        """A new session; `family_id` None starts a new family (whose id is this session's)."""
        session_id = new_session_id()
        async with self.store.engine.begin() as conn:
            row = (
                await conn.execute(
                    insert(t.user_sessions)
                    .values(
                        id=session_id,
                        user_id=user_id,
                        family_id=family_id or session_id,
                        token_hash=token_hash,
                        created_at=utcnow(),
                        expires_at=expires_at,
                        client_ip=client_ip,
                        user_agent=user_agent,
                    )
                    .returning(t.user_sessions)
                )
            ).one()
        return _session(row)

    async def session_addresses(
        self, user_id: str, since: datetime, limit: int = 1000
    ) -> list[str]:
        """The client addresses this user's sessions were created from since `since` (a
        login or a refresh), newest first."""
        c = t.user_sessions.c
        query = (
            select(c.client_ip, func.max(c.created_at).label("last"))
            .where(c.user_id == user_id, c.created_at >= since, c.client_ip.is_not(None))
            .group_by(c.client_ip)
            .order_by(func.max(c.created_at).desc())
            .limit(limit)
        )
        async with self.store.engine.connect() as conn:
            return [str(row.client_ip) for row in await conn.execute(query)]

    async def get_session_by_token(self, token_hash: str) -> SessionRecord | None:
        query = select(t.user_sessions).where(t.user_sessions.c.token_hash == token_hash)
        return await self._first(SessionRecord, query)

    async def session_user(self, session_id: str) -> SessionUser | None:
        """A session and its user in one round trip (the check behind every request made
        with an access token); None if either is gone."""
        async with self.store.autocommit.connect() as conn:
            row = (await conn.exec_driver_sql(_SESSION_USER, {"sid": session_id})).one_or_none()
        if row is None:
            return None
        return SessionUser(
            session_id=row.id,
            user_id=row.user_id,
            username=row.username,
            role=row.role,
            disabled=row.disabled,
            revoked=row.revoked_at is not None,
        )

    async def get_session(self, session_id: str) -> SessionRecord | None:
        query = select(t.user_sessions).where(t.user_sessions.c.id == session_id)
        return await self._first(SessionRecord, query)

    async def family_sessions(self, family_id: str) -> list[SessionRecord]:
        query = (
            select(t.user_sessions)
            .where(t.user_sessions.c.family_id == family_id)
            .order_by(t.user_sessions.c.created_at, t.user_sessions.c.id)
        )
        return await self._all(SessionRecord, query)

    async def rotate_session(
        self,
        session_id: str,
        *,
        token_hash: str,
        expires_at: datetime,
        client_ip: str | None,
        user_agent: str | None,
    ) -> SessionRecord | None:
        """Mark the session rotated and add its successor (same user and family), in one
        transaction. None when the session was already rotated, revoked or expired: of two
        refreshes with the same token, exactly one gets a successor."""
        now = utcnow()
        async with self.store.engine.begin() as conn:
            family = (
                await conn.execute(
                    select(t.user_sessions.c.family_id).where(t.user_sessions.c.id == session_id)
                )
            ).scalar_one_or_none()
            if family is None:
                return None
            await _lock_family(conn, family)
            old = (
                await conn.execute(
                    update(t.user_sessions)
                    .where(
                        t.user_sessions.c.id == session_id,
                        t.user_sessions.c.rotated_at.is_(None),
                        t.user_sessions.c.revoked_at.is_(None),
                        t.user_sessions.c.expires_at > now,
                    )
                    .values(rotated_at=now)
                    .returning(t.user_sessions.c.user_id, t.user_sessions.c.family_id)
                )
            ).first()
            if old is None:
                return None
            row = (
                await conn.execute(
                    insert(t.user_sessions)
                    .values(
                        id=new_session_id(),
                        user_id=old.user_id,
                        family_id=old.family_id,
                        token_hash=token_hash,
                        created_at=now,
                        expires_at=expires_at,
                        client_ip=client_ip,
                        user_agent=user_agent,
                    )
                    .returning(t.user_sessions)
                )
            ).one()
        return _session(row)

    async def revoke_family(self, family_id: str, reason: str) -> int:
        """Revoke every session of a login; returns how many were still live."""
        async with self.store.engine.begin() as conn:
            await _lock_family(conn, family_id)
            result = await conn.execute(
                update(t.user_sessions)
                .where(
                    t.user_sessions.c.family_id == family_id,
                    t.user_sessions.c.revoked_at.is_(None),
                )
                .values(revoked_at=utcnow(), revoked_reason=reason)
            )
        return result.rowcount

    async def revoke_session(self, session_id: str, reason: str) -> bool:
        async with self.store.engine.begin() as conn:
            result = await conn.execute(
                update(t.user_sessions)
                .where(
                    t.user_sessions.c.id == session_id,
                    t.user_sessions.c.revoked_at.is_(None),
                )
                .values(revoked_at=utcnow(), revoked_reason=reason)
            )
        return result.rowcount > 0

    async def revoke_user_sessions(self, user_id: str, reason: str) -> int:
        """Revoke all of a user's sessions (password change, account disabled)."""
        async with self.store.engine.begin() as conn:
            result = await conn.execute(
                update(t.user_sessions)
                .where(
                    t.user_sessions.c.user_id == user_id,
                    t.user_sessions.c.revoked_at.is_(None),
                )
                .values(revoked_at=utcnow(), revoked_reason=reason)
            )
        return result.rowcount

    # -- API keys --------------------------------------------------------------------------
    async def create_api_key(
        self, user_id: str, name: str, prefix: str, key_hash: str
    ) -> ApiKeyRecord:
        async with self.store.engine.begin() as conn:
            row = (
                await conn.execute(
                    insert(t.api_keys)
                    .values(
                        id=new_api_key_id(),
                        user_id=user_id,
                        name=name,
                        prefix=prefix,
                        key_hash=key_hash,
                        created_at=utcnow(),
                    )
                    .returning(t.api_keys)
                )
            ).one()
        return _api_key(row)

    async def get_api_key_by_hash(self, key_hash: str) -> ApiKeyRecord | None:
        query = select(t.api_keys).where(t.api_keys.c.key_hash == key_hash)
        return await self._first(ApiKeyRecord, query)

    async def get_api_key(self, key_id: str) -> ApiKeyRecord | None:
        return await self._first(ApiKeyRecord, select(t.api_keys).where(t.api_keys.c.id == key_id))

    async def list_api_keys(self, user_id: str) -> list[ApiKeyRecord]:
        query = (
            select(t.api_keys)
            .where(t.api_keys.c.user_id == user_id)
            .order_by(t.api_keys.c.created_at, t.api_keys.c.id)
        )
        return await self._all(ApiKeyRecord, query)

    async def revoke_api_key(self, user_id: str, key_id: str) -> bool:
        """Revoke `user_id`'s key `key_id`. False when that user has no such key. Revoking
        a revoked key again is harmless (it keeps its first revocation time)."""
        async with self.store.engine.begin() as conn:
            row = (
                await conn.execute(
                    update(t.api_keys)
                    .where(t.api_keys.c.id == key_id, t.api_keys.c.user_id == user_id)
                    .values(revoked_at=func.coalesce(t.api_keys.c.revoked_at, utcnow()))
                    .returning(t.api_keys.c.id)
                )
            ).first()
        return row is not None

    async def touch_api_key(self, key_id: str) -> None:
        """Record a use, at most once per TOUCH_INTERVAL (one request per key is one write
        otherwise)."""
        now = utcnow()
        async with self.store.autocommit.connect() as conn:
            await conn.execute(
                update(t.api_keys)
                .where(
                    t.api_keys.c.id == key_id,
                    (t.api_keys.c.last_used_at.is_(None))
                    | (t.api_keys.c.last_used_at < now - TOUCH_INTERVAL),
                )
                .values(last_used_at=now)
            )
