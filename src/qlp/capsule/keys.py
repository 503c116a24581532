"""The ed25519 key that signs capsules, and the public keys that check them.

The private key comes from the secret provider (the QLP_SIGNING_KEY setting: base64 of the
raw 32-byte seed, or a PEM private key). Without it QLP keeps one of its own in
QLP_HOME/keys/capsule-ed25519.key, created on first use with mode 0600 in a 0700 folder.
A key file that group or others can read or write is refused, never used.
"""

from __future__ import annotations

import base64
import binascii
import os
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from qlp.capsule.base import SigningKeyError
from qlp.errors import NotFoundError, UserInputError
from qlp.keyfiles import MAX_KEY_FILE, create_once, private_folder, read_private

KEY_DIR = "keys"
KEY_FILE = "capsule-ed25519.key"
PUBLIC_PREFIX = "ed25519:"


def key_file_path(home: Path) -> Path:
    return home / KEY_DIR / KEY_FILE


def public_key_text(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    """'ed25519:' and the base64 of the raw 32-byte public key."""
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return PUBLIC_PREFIX + base64.b64encode(raw).decode("ascii")


def public_key_pem(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode("ascii")


def parse_public_key_text(text: str) -> Ed25519PublicKey:
    """'ed25519:<base64>' -> the key; ValueError when it is not one."""
    if not text.startswith(PUBLIC_PREFIX):
        raise ValueError("does not start with 'ed25519:'")
    try:
        raw = base64.b64decode(text[len(PUBLIC_PREFIX) :].strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("the part after 'ed25519:' is not base64") from None
    if len(raw) != 32:
        raise ValueError(f"an ed25519 public key has 32 bytes, not {len(raw)}")
    return Ed25519PublicKey.from_public_bytes(raw)


def parse_public_key(value: str) -> Ed25519PublicKey:
    """A `--key` argument: 'ed25519:<base64>', or a file holding that text, a PEM public
    key or an OpenSSH 'ssh-ed25519 ...' line."""
    value = value.strip()
    if value.startswith(PUBLIC_PREFIX):
        try:
            return parse_public_key_text(value)
        except ValueError as exc:
            raise UserInputError(f"--key {value}: {exc}") from None
    path = Path(value).expanduser()
    if not path.is_file():
        raise NotFoundError(
            f"--key {value!r}: not an ed25519:<base64> public key, and no such file"
        )
    data = path.read_bytes()[:MAX_KEY_FILE]
    text = data.decode("utf-8", "replace").strip()
    try:
        if text.startswith(PUBLIC_PREFIX):
            return parse_public_key_text(text)
        if "-----BEGIN PUBLIC KEY-----" in text:
            loaded = serialization.load_pem_public_key(data)
        elif text.startswith("ssh-ed25519 "):
            loaded = serialization.load_ssh_public_key(data)
        else:
            raise ValueError("expected ed25519:<base64>, a PEM public key or ssh-ed25519")
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise UserInputError(f"--key {path}: not an ed25519 public key ({exc})") from None
    if not isinstance(loaded, Ed25519PublicKey):
        raise UserInputError(f"--key {path}: the key is not an ed25519 key")
    return loaded


def parse_private_key(value: str, origin: str = "QLP_SIGNING_KEY") -> Ed25519PrivateKey:
    """Base64 of the raw 32-byte seed, or a PEM (PKCS#8) private key. The value itself
    never appears in an error message."""
    text = value.strip()
    if text.startswith("-----BEGIN"):
        try:
            key = serialization.load_pem_private_key(text.encode("ascii"), password=None)
        except (ValueError, TypeError, UnsupportedAlgorithm, UnicodeEncodeError):
            raise SigningKeyError(
                f"{origin} is not a readable unencrypted PEM private key"
            ) from None
        if not isinstance(key, Ed25519PrivateKey):
            raise SigningKeyError(f"{origin} holds a key that is not an ed25519 key")
        return key
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != 32:
        raise SigningKeyError(
            f"{origin} is not an ed25519 key: give the base64 of the raw 32-byte seed, "
            "or a PEM private key"
        )
    return Ed25519PrivateKey.from_private_bytes(raw)


def private_key_pem(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def load_or_create_signing_key(home: Path, env_value: str | None) -> Ed25519PrivateKey:
    """The key capsules are signed with: `env_value` (QLP_SIGNING_KEY) when set, else the
    key file in `home`, created on first use."""
    if env_value is not None and env_value.strip():
        return parse_private_key(env_value)
    path = key_file_path(home)
    private_folder(path.parent, SigningKeyError)
    if not os.path.lexists(path):
        create_once(path, private_key_pem(Ed25519PrivateKey.generate()))
    return _read_key_file(path)


def _read_key_file(path: Path) -> Ed25519PrivateKey:
    data = read_private(path, "the signing key", SigningKeyError)
    return parse_private_key(data.decode("ascii", "replace"), origin=str(path))
