"""Password hashing (argon2id) and the password policy.

argon2-cffi's defaults (RFC 9106's second recommended profile: 64 MiB, 3 passes) are used
as they are; a stored hash made with older parameters is re-hashed at the next login.
"""

from __future__ import annotations

import secrets
from functools import lru_cache

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from qlp.errors import UserInputError

MIN_PASSWORD_LENGTH = 10
MAX_PASSWORD_LENGTH = 1024

_HASHER = PasswordHasher()


def hash_password(password: str) -> str:
    return _HASHER.hash(password)


def verify_password(stored_hash: str, password: str) -> bool:
    """True when `password` matches; False for a wrong password or an unreadable hash."""
    try:
        return _HASHER.verify(stored_hash, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def needs_rehash(stored_hash: str) -> bool:
    try:
        return _HASHER.check_needs_rehash(stored_hash)
    except (InvalidHashError, ValueError):
        return True


@lru_cache(maxsize=1)
def _dummy_hash() -> str:
    return _HASHER.hash(secrets.token_urlsafe(24))


def warm_up() -> None:
    """Make the dummy hash now, so the first unknown-username login is not the slow one."""
    _dummy_hash()


def verify_dummy(password: str) -> None:
    """Spend the time a real verification takes, for a username that does not exist, so
    the answer's timing does not tell which usernames do."""
    verify_password(_dummy_hash(), password)


def check_password_policy(password: str) -> None:
    """Length only (NIST SP 800-63B): composition rules make passwords worse, not better."""
    if len(password) < MIN_PASSWORD_LENGTH:
        raise UserInputError(
            f"the password is too short: use at least {MIN_PASSWORD_LENGTH} characters"
        )
    if len(password) > MAX_PASSWORD_LENGTH:
        raise UserInputError(
            f"the password is too long: use at most {MAX_PASSWORD_LENGTH} characters"
        )
    if not password.strip():
        raise UserInputError("the password cannot be only spaces")
