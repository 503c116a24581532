"""argon2id password hashing, the policy, and the dummy verification for unknown users."""

from __future__ import annotations

import time

import pytest

from qlp.auth.passwords import (
    check_password_policy,
    hash_password,
    needs_rehash,
    verify_dummy,
    verify_password,
)
from qlp.errors import UserInputError


def test_hash_is_argon2id_salted_and_verifies() -> None:
    first = hash_password("correct horse battery")
    second = hash_password("correct horse battery")
    assert first.startswith("$argon2id$")
    assert first != second  # a fresh salt each time
    assert verify_password(first, "correct horse battery")
    assert not verify_password(first, "correct horse batterY")
    assert not needs_rehash(first)


@pytest.mark.parametrize("stored", ["", "plain", "$argon2id$v=19$broken", "$2b$12$abc"])
def test_unreadable_stored_hash_is_a_mismatch_not_an_exception(stored: str) -> None:
    assert verify_password(stored, "whatever password") is False


def test_policy_length_limits() -> None:
    check_password_policy("x" * 10)
    check_password_policy("é" * 1024)
    with pytest.raises(UserInputError, match="at least 10"):
        check_password_policy("x" * 9)
    with pytest.raises(UserInputError, match="at most 1024"):
        check_password_policy("x" * 1025)
    with pytest.raises(UserInputError, match="spaces"):
        check_password_policy(" " * 12)


def test_dummy_verification_does_the_same_work_as_a_real_one() -> None:
    from argon2 import extract_parameters

    from qlp.auth import passwords

    stored = hash_password("the real password")
    verify_dummy("warm the cache")
    # Same argon2 parameters as a real hash, so the same memory and passes...
    assert extract_parameters(passwords._dummy_hash()) == extract_parameters(stored)

    # ... and it really runs: a skipped check would be thousands of times faster. Timed
    # interleaved, best of five, with a wide margin: other processes share the CPU.
    real, dummy = float("inf"), float("inf")
    for _ in range(5):
        start = time.perf_counter()
        verify_password(stored, "a wrong password")
        real = min(real, time.perf_counter() - start)
        start = time.perf_counter()
        verify_dummy("a wrong password")
        dummy = min(dummy, time.perf_counter() - start)
    assert dummy > real / 4, (dummy, real)
