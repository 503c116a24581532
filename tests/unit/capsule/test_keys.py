"""The signing key: created privately, reused, overridden by the secret, refused when exposed."""

from __future__ import annotations

import base64
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from qlp.capsule.base import SigningKeyError
from qlp.capsule.keys import (
    key_file_path,
    load_or_create_signing_key,
    parse_public_key,
    private_key_pem,
    public_key_pem,
    public_key_text,
)
from qlp.errors import NotFoundError, UserInputError


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_created_private_on_first_use_then_reused(qlp_home: Path) -> None:
    key = load_or_create_signing_key(qlp_home, None)
    path = key_file_path(qlp_home)
    assert path == qlp_home / "keys" / "capsule-ed25519.key"
    assert _mode(path) == 0o600
    assert _mode(path.parent) == 0o700
    assert b"BEGIN PRIVATE KEY" in path.read_bytes()
    again = load_or_create_signing_key(qlp_home, None)
    assert public_key_text(again) == public_key_text(key)
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp file left


def test_loose_key_folder_is_tightened(qlp_home: Path) -> None:
    (qlp_home / "keys").mkdir(mode=0o755)
    (qlp_home / "keys").chmod(0o755)
    load_or_create_signing_key(qlp_home, None)
    assert _mode(qlp_home / "keys") == 0o700


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o620, 0o644])
def test_exposed_key_file_is_refused(qlp_home: Path, mode: int) -> None:
    load_or_create_signing_key(qlp_home, None)
    path = key_file_path(qlp_home)
    path.chmod(mode)
    with pytest.raises(SigningKeyError, match=r"group or others .*chmod 600"):
        load_or_create_signing_key(qlp_home, None)


def test_symlinked_key_file_is_refused(qlp_home: Path, tmp_path: Path) -> None:
    real = tmp_path / "real.key"
    real.write_bytes(private_key_pem(Ed25519PrivateKey.generate()))
    real.chmod(0o600)
    (qlp_home / "keys").mkdir(mode=0o700)
    key_file_path(qlp_home).symlink_to(real)
    with pytest.raises(SigningKeyError, match="cannot open"):
        load_or_create_signing_key(qlp_home, None)


def test_env_value_wins(qlp_home: Path) -> None:
    seed = bytes(range(32))
    from_env = load_or_create_signing_key(qlp_home, base64.b64encode(seed).decode())
    assert public_key_text(from_env) == public_key_text(Ed25519PrivateKey.from_private_bytes(seed))
    assert not key_file_path(qlp_home).exists()  # no file made when the secret is set
    pem = private_key_pem(Ed25519PrivateKey.from_private_bytes(seed)).decode()
    assert public_key_text(load_or_create_signing_key(qlp_home, pem)) == public_key_text(from_env)


@pytest.mark.parametrize(
    "value", ["not base64", base64.b64encode(b"short").decode(), "-----BEGIN junk"]
)
def test_bad_env_value_is_refused_without_echo(qlp_home: Path, value: str) -> None:
    with pytest.raises(SigningKeyError) as err:
        load_or_create_signing_key(qlp_home, value)
    assert "QLP_SIGNING_KEY" in str(err.value)
    assert value not in str(err.value)


def test_public_key_parsing(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    text = public_key_text(key)
    assert text.startswith("ed25519:") and len(text) == len("ed25519:") + 44
    assert public_key_text(parse_public_key(text)) == text
    pem_file = tmp_path / "pub.pem"
    pem_file.write_text(public_key_pem(key))
    assert public_key_text(parse_public_key(str(pem_file))) == text
    text_file = tmp_path / "pub.txt"
    text_file.write_text(text + "\n")
    assert public_key_text(parse_public_key(str(text_file))) == text
    with pytest.raises(UserInputError, match="32 bytes"):
        parse_public_key("ed25519:AAAA")
    with pytest.raises(NotFoundError):
        parse_public_key(str(tmp_path / "nope.pem"))
    junk = tmp_path / "junk"
    junk.write_text("hello")
    with pytest.raises(UserInputError, match="not an ed25519 public key"):
        parse_public_key(str(junk))
