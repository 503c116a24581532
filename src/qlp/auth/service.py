"""AuthService: the rules of identity. The API layer and the CLI call it; it never sees HTTP.

Rules, in short (docs/SECURITY.md, "Users, sessions and keys"):

- login: a wrong password, an unknown username and a disabled account give the same error
  after the same work (an argon2 verification), so neither the message nor the timing says
  which usernames exist.
- refresh: each refresh token works once. Using it returns a new pair and marks the old
  token rotated. Presenting a rotated token again means two parties hold it (one of them a
  thief), and nobody can tell which: the whole family (every session descended from that
  login) is revoked. Two refreshes racing with the same token are the same case: one wins
  the rotation, the other one is a reuse and revokes the family. A client must therefore
  serialise its refreshes.
- logout revokes the family of the caller's session: the refresh token, and every access
  token issued in that login, stop working at once (each request checks the session).
- authenticate: an API key (`qlk_...`) or an access token (JWT). The role is read from the
  user's row on every request, so changing or disabling an account takes effect at once.
- API keys carry their user's role; an API key cannot create further keys (a leaked key must
  not be able to outlive its revocation). Members revoke their own keys; admins any key.
"""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime, timedelta

from qlp.auth.base import Principal, Role, TokenPair
from qlp.auth.passwords import (
    check_password_policy,
    hash_password,
    needs_rehash,
    verify_dummy,
    verify_password,
    warm_up,
)
from qlp.auth.tokens import (
    API_KEY_PREFIX,
    REFRESH_PREFIX,
    TokenService,
    new_api_key,
    new_refresh_token,
    token_digest,
)
from qlp.errors import AuthError, NotFoundError, PermissionDeniedError, UserInputError
from qlp.store.base import ApiKeyRecord, SessionRecord, UserRecord
from qlp.store.users import UserStore

USERNAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{1,63}$")
BAD_LOGIN = "invalid username or password"
# One answer for every rejected token or key: the reason is not the caller's business.
REJECTED = "invalid or expired token"
MAX_KEY_NAME = 100
# Characters of a key shown in listings: "qlk_" and 8 of its random part.
KEY_PREFIX_LENGTH = 12


def normalise_username(username: str) -> str:
    """Lower-cased and checked: 2-64 of a-z 0-9 . _ -, starting with a letter or digit."""
    name = username.strip().lower()
    if not USERNAME_RE.match(name):
        raise UserInputError(
            f"invalid username {username!r}: use 2 to 64 characters from a-z, 0-9, '.', '_' "
            "and '-', starting with a letter or a digit"
        )
    return name


def _now() -> datetime:
    return datetime.now(UTC)


class AuthService:
    def __init__(self, users: UserStore, tokens: TokenService, refresh_ttl_s: int) -> None:
        self.users = users
        self.tokens = tokens
        self.refresh_ttl = timedelta(seconds=refresh_ttl_s)

    # -- users -----------------------------------------------------------------------------
    async def create_user(self, username: str, password: str, role: Role) -> UserRecord:
        name = normalise_username(username)
        check_password_policy(password)
        role = Role(role)
        hashed = await asyncio.to_thread(hash_password, password)
        return await self.users.create_user(name, hashed, role.value)

    async def user_by_name(self, username: str) -> UserRecord:
        user = await self.users.find_by_username(username.strip().lower())
        if user is None:
            raise NotFoundError(f"no user named {username!r}")
        return user

    async def principal_for(self, username: str) -> Principal:
        """The principal of a user as the local operator acts for them (the CLI, which has
        the database itself and so full authority)."""
        user = await self.user_by_name(username)
        return Principal(user_id=user.id, username=user.username, role=Role(user.role))

    # -- login, refresh, logout --------------------------------------------------------------
    async def login(
        self,
        username: str,
        password: str,
        *,
        client_ip: str | None,
        user_agent: str | None,
    ) -> tuple[Principal, TokenPair]:
        await asyncio.to_thread(warm_up)
        name = username.strip().lower()
        user = await self.users.find_by_username(name) if USERNAME_RE.match(name) else None
        if user is None:
            await asyncio.to_thread(verify_dummy, password)
            raise AuthError(BAD_LOGIN)
        ok = await asyncio.to_thread(verify_password, user.password_hash, password)
        if not ok or user.disabled:
            raise AuthError(BAD_LOGIN)
        if needs_rehash(user.password_hash):
            await self.users.set_password_hash(
                user.id, await asyncio.to_thread(hash_password, password)
            )
        refresh = new_refresh_token()
        session = await self.users.create_session(
            user.id, None, token_digest(refresh), _now() + self.refresh_ttl, client_ip, user_agent
        )
        principal = Principal(
            user_id=user.id, username=user.username, role=Role(user.role), session_id=session.id
        )
        return principal, self._pair(user, session, refresh)

    def _pair(self, user: UserRecord, session: SessionRecord, refresh: str) -> TokenPair:
        access, expires_in = self.tokens.issue_access(user.id, user.role, session.id)
        return TokenPair(access_token=access, refresh_token=refresh, expires_in=expires_in)

    async def recent_addresses(self, username: str, days: int) -> list[str]:
        """Addresses `username` logged in or refreshed from in the last `days` days (none
        for a name that is not an account)."""
        name = username.strip().lower()
        user = await self.users.find_by_username(name) if USERNAME_RE.match(name) else None
        if user is None or user.disabled:
            return []
        return await self.users.session_addresses(user.id, _now() - timedelta(days=days))

    async def refresh(
        self, refresh_token: str, *, client_ip: str | None, user_agent: str | None
    ) -> TokenPair:
        if not refresh_token.startswith(REFRESH_PREFIX):
            raise AuthError(REJECTED)
        session = await self.users.get_session_by_token(token_digest(refresh_token))
        if session is None or session.revoked_at is not None:
            raise AuthError(REJECTED)
        if session.rotated_at is not None:
            await self.users.revoke_family(session.family_id, "refresh token reused")
            raise AuthError(REJECTED)
        if session.expires_at <= _now():
            raise AuthError(REJECTED)
        user = await self._active_user(session.user_id)
        new_refresh = new_refresh_token()
        successor = await self.users.rotate_session(
            session.id,
            token_hash=token_digest(new_refresh),
            expires_at=_now() + self.refresh_ttl,
            client_ip=client_ip,
            user_agent=user_agent,
        )
        if successor is None:
            # Rotated (or revoked) between our read and our update: another request used
            # this token at the same moment. Same rule as any other reuse.
            await self.users.revoke_family(session.family_id, "refresh token reused")
            raise AuthError(REJECTED)
        return self._pair(user, successor, new_refresh)

    async def logout(self, principal: Principal) -> None:
        """End the caller's login: revoke its session family (the refresh token and every
        access token issued since that login). An API key has no session: revoke the key."""
        if principal.session_id is None:
            raise UserInputError(
                "this request was made with an API key, which has no session to end; "
                "revoke the key instead"
            )
        session = await self.users.get_session(principal.session_id)
        if session is not None:
            await self.users.revoke_family(session.family_id, "logout")

    # -- every request ---------------------------------------------------------------------
    async def authenticate(self, credential: str) -> Principal:
        """The caller behind an API key or an access token; AuthError for anything else."""
        credential = credential.strip()
        if credential.startswith(API_KEY_PREFIX):
            return await self._authenticate_key(credential)
        if credential.startswith(REFRESH_PREFIX):
            raise AuthError(REJECTED)
        claims = self.tokens.verify_access(credential)
        # The session and its user, read on every request (one round trip): a logout, a
        # revoked session or a disabled account takes effect at once.
        found = await self.users.session_user(claims.session_id)
        if found is None or found.revoked or found.disabled or found.user_id != claims.user_id:
            raise AuthError(REJECTED)
        return Principal(
            user_id=found.user_id,
            username=found.username,
            role=Role(found.role),
            session_id=found.session_id,
        )

    async def _authenticate_key(self, key: str) -> Principal:
        record = await self.users.get_api_key_by_hash(token_digest(key))
        if record is None or record.revoked_at is not None:
            raise AuthError(REJECTED)
        user = await self._active_user(record.user_id)
        await self.users.touch_api_key(record.id)
        return Principal(
            user_id=user.id, username=user.username, role=Role(user.role), api_key_id=record.id
        )

    async def _active_user(self, user_id: str) -> UserRecord:
        try:
            user = await self.users.get_user(user_id)
        except NotFoundError:
            raise AuthError(REJECTED) from None
        if user.disabled:
            raise AuthError(REJECTED)
        return user

    # -- API keys --------------------------------------------------------------------------
    async def create_api_key(self, principal: Principal, name: str) -> tuple[ApiKeyRecord, str]:
        """A new key for the principal's user. The plaintext is returned once, here; only
        its sha256 is stored."""
        if principal.api_key_id is not None:
            raise PermissionDeniedError(
                "an API key cannot create API keys; sign in with a password to create one"
            )
        label = name.strip()
        if not label or len(label) > MAX_KEY_NAME:
            raise UserInputError(f"an API key needs a name of 1 to {MAX_KEY_NAME} characters")
        key = new_api_key()
        record = await self.users.create_api_key(
            principal.user_id, label, key[:KEY_PREFIX_LENGTH], token_digest(key)
        )
        return record, key

    async def list_api_keys(self, principal: Principal) -> list[ApiKeyRecord]:
        return await self.users.list_api_keys(principal.user_id)

    async def revoke_api_key(
        self, principal: Principal, key_id: str, *, own_only: bool = False
    ) -> None:
        """Revoke one of the principal's keys (admins: anyone's, unless `own_only`). Another
        user's key is NotFoundError for a non-admin, as if it did not exist."""
        owner = principal.user_id
        if principal.is_admin and not own_only:
            record = await self.users.get_api_key(key_id)
            if record is not None:
                owner = record.user_id
        if not await self.users.revoke_api_key(owner, key_id):
            raise NotFoundError(f"no API key {key_id}")
