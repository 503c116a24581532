"""Access tokens (JWT, HS256 only), refresh tokens and API keys (opaque random strings).

Access tokens are short-lived and carry the session id, so revoking a session (logout,
refresh-token reuse) ends them at once: AuthService checks the session on every request.
Refresh tokens and API keys are random strings; only their sha256 is stored, so a copy of
the database does not hold a usable credential. sha256 (not argon2) is right for them: they
have 256 bits of entropy, so there is nothing to brute-force, and lookups must be fast.

Signing keys are "kid=secret" pairs (QLP_JWT_KEYS). The first signs; every listed key
verifies. To rotate: put a new key first, keep the old one listed for one access-token
lifetime, then drop it.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import jwt

from qlp.errors import AuthError, ConfigError

ALGORITHM = "HS256"
ISSUER = "qlp"
AUDIENCE = "qlp-api"
ACCESS_TYPE = "access"
REFRESH_PREFIX = "qlr_"
API_KEY_PREFIX = "qlk_"
MIN_SECRET_BYTES = 32
_KID_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_INVALID = "invalid or expired token"
_REQUIRED_CLAIMS = ["sub", "role", "sid", "iat", "exp", "jti", "typ", "iss", "aud"]
# Access tokens whose signature and claims were checked, kept until they expire (a client
# sends the same token on every request until it refreshes). Bounded; oldest dropped first.
VERIFIED_CACHE_SIZE = 4096


def token_digest(token: str) -> str:
    """What is stored of a refresh token or API key: the sha256 hex of its text."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_refresh_token() -> str:
    return REFRESH_PREFIX + secrets.token_urlsafe(32)


def new_api_key() -> str:
    return API_KEY_PREFIX + secrets.token_urlsafe(32)


class SigningKeys:
    """HMAC keys by key id; the first one signs, all of them verify."""

    def __init__(self, keys: dict[str, str]) -> None:
        if not keys:
            raise ConfigError("QLP_JWT_KEYS: no signing key given")
        self._keys = dict(keys)
        self._current = next(iter(self._keys))

    @classmethod
    def parse(cls, text: str) -> SigningKeys:
        """ "kid=secret[,kid=secret...]". Errors name QLP_JWT_KEYS, never a secret."""
        keys: dict[str, str] = {}
        for number, part in enumerate(text.split(","), start=1):
            part = part.strip()
            if not part:
                continue
            kid, sep, secret = part.partition("=")
            kid, secret = kid.strip(), secret.strip()
            if not sep or not kid:
                raise ConfigError(
                    f"QLP_JWT_KEYS: entry {number} is not 'kid=secret' "
                    "(format: kid=secret[,kid=secret...])"
                )
            if not _KID_RE.match(kid):
                raise ConfigError(
                    f"QLP_JWT_KEYS: key id {kid!r} may only hold letters, digits, '.', '_' "
                    "and '-' (at most 64)"
                )
            if kid in keys:
                raise ConfigError(f"QLP_JWT_KEYS: key id {kid!r} is listed twice")
            if len(secret.encode("utf-8")) < MIN_SECRET_BYTES:
                raise ConfigError(
                    f"QLP_JWT_KEYS: the secret of key {kid!r} is shorter than "
                    f"{MIN_SECRET_BYTES} bytes; use e.g. "
                    "python -c 'import secrets; print(secrets.token_urlsafe(48))'"
                )
            keys[kid] = secret
        if not keys:
            raise ConfigError("QLP_JWT_KEYS: no signing key given (format: kid=secret)")
        return cls(keys)

    @property
    def current_kid(self) -> str:
        return self._current

    @property
    def kids(self) -> list[str]:
        return list(self._keys)

    def secret(self, kid: str) -> str | None:
        return self._keys.get(kid)

    def __repr__(self) -> str:
        return f"SigningKeys(kids={self.kids!r})"


@dataclass(frozen=True)
class AccessClaims:
    user_id: str
    role: str
    session_id: str
    expires_at: datetime
    token_id: str = ""


class TokenService:
    """Issues and checks access tokens. `clock` (seconds since the epoch) is for tests."""

    def __init__(
        self,
        keys: SigningKeys,
        access_ttl_s: int,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if access_ttl_s <= 0:
            raise ConfigError("QLP_ACCESS_TOKEN_TTL_S must be positive")
        self.keys = keys
        self.access_ttl_s = access_ttl_s
        self._clock = clock
        # token -> (exp, claims). Only what the token itself proves is kept: the session and
        # the user are still looked up on every request (AuthService.authenticate), so
        # logout, revocation and a disabled account take effect at once. The keys cannot
        # change while the process runs.
        self._verified: dict[str, tuple[int, AccessClaims]] = {}

    def issue_access(self, user_id: str, role: str, session_id: str) -> tuple[str, int]:
        now = int(self._clock())
        claims: dict[str, Any] = {
            "sub": user_id,
            "role": str(role),
            "sid": session_id,
            "iat": now,
            "exp": now + self.access_ttl_s,
            "jti": uuid.uuid4().hex,
            "typ": ACCESS_TYPE,
            "iss": ISSUER,
            "aud": AUDIENCE,
        }
        kid = self.keys.current_kid
        secret = self.keys.secret(kid)
        assert secret is not None
        token = jwt.encode(claims, secret, algorithm=ALGORITHM, headers={"kid": kid})
        return token, self.access_ttl_s

    def verify_access(self, token: str) -> AccessClaims:
        """The token's claims, or AuthError("invalid or expired token") whatever is wrong."""
        cached = self._verified.get(token)
        if cached is not None:
            # PyJWT's own rule and clock: expired once exp <= now.
            if cached[0] > time.time():
                return cached[1]
            del self._verified[token]
        claims = self._verify(token)
        exp = int(claims.expires_at.timestamp())
        if len(self._verified) >= VERIFIED_CACHE_SIZE:
            del self._verified[next(iter(self._verified))]
        self._verified[token] = (exp, claims)
        return claims

    def _verify(self, token: str) -> AccessClaims:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise AuthError(_INVALID) from None
        kid = header.get("kid")
        # The algorithm is pinned, never taken from the header: "none", RS256 (with the
        # HMAC secret as a "public key") and anything else fail here or in decode below.
        if header.get("alg") != ALGORITHM or not isinstance(kid, str):
            raise AuthError(_INVALID)
        secret = self.keys.secret(kid)
        if secret is None:
            raise AuthError(_INVALID)
        try:
            claims = jwt.decode(
                token,
                secret,
                algorithms=[ALGORITHM],
                audience=AUDIENCE,
                issuer=ISSUER,
                options={"require": _REQUIRED_CLAIMS},
            )
        except jwt.PyJWTError:
            raise AuthError(_INVALID) from None
        sub, role, sid, exp = claims["sub"], claims["role"], claims["sid"], claims["exp"]
        if (
            claims["typ"] != ACCESS_TYPE
            or not all(isinstance(v, str) and v for v in (sub, role, sid))
            or not isinstance(exp, int)
        ):
            raise AuthError(_INVALID)
        return AccessClaims(
            user_id=sub,
            role=role,
            session_id=sid,
            expires_at=datetime.fromtimestamp(exp, UTC),
            token_id=str(claims["jti"]),
        )
