"""What the rest of QLP sees of identity: roles, the authenticated caller, token pairs, and
the port secrets come through."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol


class Role(StrEnum):
    ADMIN = "admin"  # everything, including other users' keys and the audit log
    MEMBER = "member"  # submit intents, review, manage their own keys
    VIEWER = "viewer"  # read only


@dataclass(frozen=True)
class Principal:
    """The caller of a request, after authentication."""

    user_id: str
    username: str
    role: Role
    session_id: str | None = None  # set when authenticated by an access token
    api_key_id: str | None = None  # set when authenticated by an API key

    @property
    def can_write(self) -> bool:
        return self.role in (Role.ADMIN, Role.MEMBER)

    @property
    def is_admin(self) -> bool:
        return self.role is Role.ADMIN


@dataclass(frozen=True)
class TokenPair:
    access_token: str
    refresh_token: str
    expires_in: int  # seconds the access token is valid for
    token_type: str = "bearer"  # noqa: S105 (the OAuth token type, not a secret)

    def __repr__(self) -> str:  # tokens must not end up in logs through a repr
        return f"TokenPair(expires_in={self.expires_in}, token_type={self.token_type!r})"


class SecretProvider(Protocol):
    """Where secrets come from (environment, Azure Key Vault). `name` is the setting's
    variable name, e.g. QLP_JWT_KEYS; None when the source does not have it."""

    def get(self, name: str) -> str | None: ...
