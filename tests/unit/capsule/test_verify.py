"""Tampering: every change to a built capsule is caught and the broken entry is named."""

from __future__ import annotations

import base64
import zipfile
from collections.abc import Iterable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from qlp.capsule.base import BuiltCapsule, CapsuleInvalidError
from qlp.capsule.format import stable_json
from qlp.capsule.verify import verify_capsule
from qlp.errors import NotFoundError

from .conftest import flip_byte, keep, rewrite

Pairs = Iterable[tuple[zipfile.ZipInfo, bytes]]


def _messages(path: Path, key: Ed25519PrivateKey | None = None) -> list[str]:
    report = verify_capsule(path, key.public_key() if key else None)
    return [str(p) for p in report.problems]


def test_intact_capsule_verifies(built: BuiltCapsule, signing_key: Ed25519PrivateKey) -> None:
    report = verify_capsule(built.path)
    assert report.ok, report.problems
    assert report.signature_valid
    assert report.key_source == "manifest"
    assert report.capsule_id == built.capsule_id
    assert report.entries_checked == len(built.manifest["entries"])
    given = verify_capsule(built.path, signing_key.public_key())
    assert given.ok and given.key_source == "given"


def test_copy_through_zipfile_still_verifies(built: BuiltCapsule, tmp_path: Path) -> None:
    # the tamper tests rewrite zips this way; an untouched rewrite must pass
    copy = rewrite(built.path, tmp_path / "copy.qlcapsule", keep)
    assert verify_capsule(copy).ok


def test_one_byte_of_a_project_file(built: BuiltCapsule, tmp_path: Path) -> None:
    def tamper(info: zipfile.ZipInfo, data: bytes) -> Pairs:
        yield info, flip_byte(data, 5) if info.filename == "project/app/main.py" else data

    bad = rewrite(built.path, tmp_path / "bad.qlcapsule", tamper)
    assert _messages(bad) == [
        "project/app/main.py: sha256 mismatch: the content differs from the manifest"
    ]


def test_one_byte_of_the_manifest(built: BuiltCapsule, tmp_path: Path) -> None:
    def tamper(info: zipfile.ZipInfo, data: bytes) -> Pairs:
        if info.filename == "manifest.json":
            data = data.replace(b'"overall":87', b'"overall":97')
        yield info, data

    bad = rewrite(built.path, tmp_path / "bad.qlcapsule", tamper)
    messages = _messages(bad)
    assert any(m.startswith("manifest.sig: bad signature") for m in messages), messages
    assert any(m.startswith("manifest.json: capsule_id") for m in messages), messages


def test_manifest_resigned_by_another_key_fails_with_the_real_key(
    built: BuiltCapsule, tmp_path: Path, signing_key: Ed25519PrivateKey
) -> None:
    """An attacker re-signs with their own key: self-signed check passes, --key does not."""
    import json

    from qlp.capsule.format import derive_capsule_id
    from qlp.capsule.keys import public_key_text

    attacker = Ed25519PrivateKey.generate()
    manifest = json.loads(stable_json(built.manifest))
    manifest["signing"]["public_key"] = public_key_text(attacker)
    manifest["capsule_id"] = derive_capsule_id(manifest)
    body = stable_json(manifest)

    def tamper(info: zipfile.ZipInfo, data: bytes) -> Pairs:
        if info.filename == "manifest.json":
            data = body
        elif info.filename == "manifest.sig":
            data = base64.b64encode(attacker.sign(body)) + b"\n"
        yield info, data

    forged = rewrite(built.path, tmp_path / "forged.qlcapsule", tamper)
    assert verify_capsule(forged).ok  # intact, but signed by someone else
    messages = _messages(forged, signing_key)
    assert any(m.startswith("manifest.sig: bad signature") for m in messages), messages
    assert any("not the given key" in m for m in messages), messages


def test_one_byte_of_the_signature(built: BuiltCapsule, tmp_path: Path) -> None:
    def tamper(info: zipfile.ZipInfo, data: bytes) -> Pairs:
        if info.filename == "manifest.sig":
            raw = bytearray(base64.b64decode(data))
            raw[10] ^= 0x01
            data = base64.b64encode(bytes(raw)) + b"\n"
        yield info, data

    bad = rewrite(built.path, tmp_path / "bad.qlcapsule", tamper)
    assert _messages(bad) == [
        "manifest.sig: bad signature: it does not match manifest.json for key " + built.public_key
    ]


def test_garbled_signature(built: BuiltCapsule, tmp_path: Path) -> None:
    def tamper(info: zipfile.ZipInfo, data: bytes) -> Pairs:
        yield info, b"not base64!!" if info.filename == "manifest.sig" else data

    bad = rewrite(built.path, tmp_path / "bad.qlcapsule", tamper)
    assert _messages(bad) == ["manifest.sig: not a base64 ed25519 signature (64 bytes)"]


def test_added_entry(built: BuiltCapsule, tmp_path: Path) -> None:
    bad = rewrite(
        built.path, tmp_path / "bad.qlcapsule", keep, extra=[("project/backdoor.py", b"x")]
    )
    assert _messages(bad) == ["project/backdoor.py: extra entry: not listed in the manifest"]


def test_removed_entry(built: BuiltCapsule, tmp_path: Path) -> None:
    def tamper(info: zipfile.ZipInfo, data: bytes) -> Pairs:
        if info.filename != "tasks/QL-TST-002.json":
            yield info, data

    bad = rewrite(built.path, tmp_path / "bad.qlcapsule", tamper)
    assert _messages(bad) == [
        "tasks/QL-TST-002.json: missing: listed in the manifest but not in the zip"
    ]


def test_removed_signature_and_manifest(built: BuiltCapsule, tmp_path: Path) -> None:
    def no_sig(info: zipfile.ZipInfo, data: bytes) -> Pairs:
        if info.filename != "manifest.sig":
            yield info, data

    def no_manifest(info: zipfile.ZipInfo, data: bytes) -> Pairs:
        if info.filename != "manifest.json":
            yield info, data

    unsigned = rewrite(built.path, tmp_path / "u.qlcapsule", no_sig)
    assert _messages(unsigned) == ["manifest.sig: missing: the capsule is not signed"]
    headless = rewrite(built.path, tmp_path / "h.qlcapsule", no_manifest)
    assert "manifest.json: missing" in _messages(headless)


def test_size_changed_in_place(built: BuiltCapsule, tmp_path: Path) -> None:
    def tamper(info: zipfile.ZipInfo, data: bytes) -> Pairs:
        yield info, data + b"# more\n" if info.filename == "project/app/main.py" else data

    bad = rewrite(built.path, tmp_path / "bad.qlcapsule", tamper)
    (message,) = _messages(bad)
    assert message.startswith("project/app/main.py: size mismatch: the manifest says")


def test_duplicate_names(built: BuiltCapsule, tmp_path: Path) -> None:
    with pytest.warns(UserWarning, match="Duplicate name"):
        bad = rewrite(
            built.path,
            tmp_path / "bad.qlcapsule",
            keep,
            extra=[("project/app/main.py", b"print('evil')\n")],
        )
    messages = _messages(bad)
    assert "project/app/main.py: appears 2 times in the zip" in messages


def test_raw_corruption_of_compressed_data(built: BuiltCapsule, tmp_path: Path) -> None:
    """A byte flipped in the file itself (not via zipfile): the entry is named."""
    data = bytearray(built.path.read_bytes())
    with zipfile.ZipFile(built.path) as zf:
        info = zf.getinfo("project/assets/logo.bin")
    # local header is 30 bytes + name + extra; flip a byte in the middle of the data
    start = info.header_offset + 30 + len(info.filename.encode())
    data[start + info.compress_size // 2] ^= 0xFF
    bad = tmp_path / "raw.qlcapsule"
    bad.write_bytes(bytes(data))
    messages = _messages(bad)
    assert len(messages) == 1 and messages[0].startswith("project/assets/logo.bin: "), messages


def test_not_a_zip(tmp_path: Path) -> None:
    junk = tmp_path / "junk.qlcapsule"
    junk.write_bytes(b"hello")
    with pytest.raises(CapsuleInvalidError, match="not a readable zip"):
        verify_capsule(junk)
    with pytest.raises(NotFoundError):
        verify_capsule(tmp_path / "missing.qlcapsule")
