"""Access tokens are accepted only when they are exactly what TokenService issues."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from qlp.auth.tokens import (
    API_KEY_PREFIX,
    REFRESH_PREFIX,
    SigningKeys,
    TokenService,
    new_api_key,
    new_refresh_token,
    token_digest,
)
from qlp.errors import AuthError, ConfigError

SECRET_A = "a" * 64
SECRET_B = "b" * 64
INVALID = "invalid or expired token"


def _b64(data: dict[str, Any]) -> str:
    raw = json.dumps(data, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _service(text: str = f"main={SECRET_A}", ttl: int = 900, **kw: Any) -> TokenService:
    return TokenService(SigningKeys.parse(text), ttl, **kw)


def _claims(**override: Any) -> dict[str, Any]:
    now = int(time.time())
    claims = {
        "sub": "QLU-1",
        "role": "member",
        "sid": "QLS-1",
        "iat": now,
        "exp": now + 600,
        "jti": "x",
        "typ": "access",
        "iss": "qlp",
        "aud": "qlp-api",
    }
    claims.update(override)
    return claims


def _rejected(service: TokenService, token: str) -> None:
    with pytest.raises(AuthError) as info:
        service.verify_access(token)
    assert str(info.value) == INVALID


def test_issued_token_verifies_with_its_claims() -> None:
    service = _service()
    token, expires_in = service.issue_access("QLU-7", "admin", "QLS-9")
    claims = service.verify_access(token)
    assert expires_in == 900
    assert (claims.user_id, claims.role, claims.session_id) == ("QLU-7", "admin", "QLS-9")
    assert abs(claims.expires_at.timestamp() - (time.time() + 900)) < 5
    header = jwt.get_unverified_header(token)
    assert header == {"alg": "HS256", "kid": "main", "typ": "JWT"}
    payload = jwt.decode(token, options={"verify_signature": False})
    assert payload["typ"] == "access"
    assert payload["iss"] == "qlp"
    assert payload["aud"] == "qlp-api"
    assert payload["jti"]


def test_token_signed_with_another_key_is_rejected() -> None:
    forged = jwt.encode(_claims(), SECRET_B, algorithm="HS256", headers={"kid": "main"})
    _rejected(_service(), forged)


def test_alg_none_is_rejected() -> None:
    header = {"alg": "none", "typ": "JWT", "kid": "main"}
    unsigned = f"{_b64(header)}.{_b64(_claims())}."
    _rejected(_service(), unsigned)
    # ... and the same with no kid at all, and with "None" spelled differently.
    _rejected(_service(), f"{_b64({'alg': 'none'})}.{_b64(_claims())}.")
    _rejected(_service(), f"{_b64({'alg': 'None', 'kid': 'main'})}.{_b64(_claims())}.")


def test_hs512_is_rejected_even_with_the_right_secret() -> None:
    token = jwt.encode(_claims(), SECRET_A, algorithm="HS512", headers={"kid": "main"})
    _rejected(_service(), token)


def test_rs256_header_is_rejected() -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    token = jwt.encode(_claims(), pem, algorithm="RS256", headers={"kid": "main"})
    _rejected(_service(), token)


def test_hs256_header_with_hs512_signature_is_rejected() -> None:
    # Header says HS256, the signature was made another way: the signature check fails.
    good = jwt.encode(_claims(), SECRET_A, algorithm="HS512", headers={"kid": "main"})
    _, payload, sig = good.split(".")
    relabelled = f"{_b64({'alg': 'HS256', 'typ': 'JWT', 'kid': 'main'})}.{payload}.{sig}"
    _rejected(_service(), relabelled)


def test_unknown_or_missing_kid_is_rejected() -> None:
    service = _service()
    other = jwt.encode(_claims(), SECRET_A, algorithm="HS256", headers={"kid": "elsewhere"})
    _rejected(service, other)
    no_kid = jwt.encode(_claims(), SECRET_A, algorithm="HS256")
    _rejected(service, no_kid)


def test_expired_token_is_rejected() -> None:
    past = _service(clock=lambda: time.time() - 3600)
    token, _ = past.issue_access("QLU-1", "member", "QLS-1")
    _rejected(_service(), token)


def test_tampered_payload_is_rejected() -> None:
    service = _service()
    token, _ = service.issue_access("QLU-1", "viewer", "QLS-1")
    header, _payload, sig = token.split(".")
    payload = jwt.decode(token, options={"verify_signature": False})
    payload["role"] = "admin"
    _rejected(service, f"{header}.{_b64(payload)}.{sig}")


@pytest.mark.parametrize(
    ("override", "drop"),
    [
        ({"iss": "someone-else"}, None),
        ({"aud": "another-api"}, None),
        ({"typ": "refresh"}, None),
        ({}, "sid"),
        ({}, "exp"),
        ({}, "typ"),
        ({"sub": ""}, None),
    ],
)
def test_wrong_issuer_audience_type_or_missing_claim_is_rejected(
    override: dict[str, Any], drop: str | None
) -> None:
    claims = _claims(**override)
    if drop:
        del claims[drop]
    token = jwt.encode(claims, SECRET_A, algorithm="HS256", headers={"kid": "main"})
    _rejected(_service(), token)


def test_hand_made_token_with_every_claim_right_is_accepted() -> None:
    # The rejections above are for the reason named, not because hand-made tokens fail.
    token = jwt.encode(_claims(), SECRET_A, algorithm="HS256", headers={"kid": "main"})
    assert _service().verify_access(token).user_id == "QLU-1"


@pytest.mark.parametrize("garbage", ["", "abc", "a.b.c", "qlk_notajwt", "...."])
def test_garbage_is_rejected(garbage: str) -> None:
    _rejected(_service(), garbage)


def test_rotation_old_kid_still_verifies_and_new_one_signs() -> None:
    old = _service(f"old={SECRET_A}")
    old_token, _ = old.issue_access("QLU-1", "member", "QLS-1")
    rotated = _service(f"new={SECRET_B},old={SECRET_A}")
    assert rotated.keys.current_kid == "new"
    assert rotated.verify_access(old_token).user_id == "QLU-1"
    new_token, _ = rotated.issue_access("QLU-2", "member", "QLS-2")
    assert jwt.get_unverified_header(new_token)["kid"] == "new"
    # Once the old key is dropped, its tokens stop working.
    _rejected(_service(f"new={SECRET_B}"), old_token)


def test_signing_keys_parse() -> None:
    keys = SigningKeys.parse(f" k1 = {SECRET_A} , k2={SECRET_B}=tail ")
    assert keys.current_kid == "k1"
    assert keys.kids == ["k1", "k2"]
    assert keys.secret("k2") == SECRET_B + "=tail"
    assert keys.secret("k3") is None
    assert SECRET_A not in repr(keys)


@pytest.mark.parametrize(
    "text",
    ["", " , ", "nokey", f"={SECRET_A}", "k1=tooweak", f"k1={SECRET_A},k1={SECRET_B}", "bad kid=x"],
)
def test_signing_keys_parse_errors_name_the_variable_not_the_secret(text: str) -> None:
    with pytest.raises(ConfigError) as info:
        SigningKeys.parse(text)
    assert "QLP_JWT_KEYS" in str(info.value)
    assert SECRET_A not in str(info.value)
    assert "tooweak" not in str(info.value)


def test_opaque_tokens_have_their_prefix_and_only_digests_are_kept() -> None:
    refresh, key = new_refresh_token(), new_api_key()
    assert refresh.startswith(REFRESH_PREFIX)
    assert key.startswith(API_KEY_PREFIX)
    assert len(refresh) > 40
    assert refresh != new_refresh_token()
    digest = token_digest(key)
    assert len(digest) == 64
    assert digest == token_digest(key)
    assert digest != token_digest(key + "x")
