"""The local capsule store: atomic, never overwrites, confined to its folder."""

from __future__ import annotations

import hashlib
import stat
from pathlib import Path

import pytest

from qlp.capsule.base import BuiltCapsule, CapsuleInputError, CapsuleStorageError, CapsuleStore
from qlp.capsule.local_store import LocalCapsuleStore
from qlp.errors import NotFoundError


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_round_trip(built: BuiltCapsule, qlp_home: Path, tmp_path: Path) -> None:
    store: CapsuleStore = LocalCapsuleStore(qlp_home / "capsules")
    uri = store.put(built.capsule_id, 1, built.path)
    assert uri == (qlp_home / "capsules" / built.capsule_id / "v1.qlcapsule").as_uri()
    assert uri == store.uri_for(built.capsule_id, 1)
    assert store.exists(uri)
    stored = qlp_home / "capsules" / built.capsule_id / "v1.qlcapsule"
    assert stat.S_IMODE(stored.stat().st_mode) == 0o600
    assert stat.S_IMODE(stored.parent.stat().st_mode) == 0o700
    assert not [p for p in stored.parent.iterdir() if p.name.endswith(".tmp")]
    got = store.get(uri, tmp_path / "fetched" / "c.qlcapsule")
    assert _sha(got) == built.sha256
    store.delete(uri)
    assert not store.exists(uri)
    store.delete(uri)  # deleting again is not an error


def test_same_bytes_again_is_idempotent_other_bytes_refused(
    built: BuiltCapsule, qlp_home: Path, tmp_path: Path
) -> None:
    store = LocalCapsuleStore(qlp_home / "capsules")
    uri = store.put(built.capsule_id, 1, built.path)
    assert store.put(built.capsule_id, 1, built.path) == uri
    other = tmp_path / "other.qlcapsule"
    other.write_bytes(b"something else")
    with pytest.raises(CapsuleStorageError, match="already exists with other content"):
        store.put(built.capsule_id, 1, other)
    assert _sha(Path(uri.removeprefix("file://"))) == built.sha256


def test_uris_outside_the_store_are_refused(qlp_home: Path, tmp_path: Path) -> None:
    store = LocalCapsuleStore(qlp_home / "capsules")
    with pytest.raises(CapsuleInputError, match="outside the capsule folder"):
        store.get("file:///etc/passwd", tmp_path / "x")
    with pytest.raises(CapsuleInputError, match="outside"):
        store.exists((qlp_home / "capsules" / ".." / "secret").as_uri())
    with pytest.raises(CapsuleInputError, match="not a local capsule URI"):
        store.exists("https://example.invalid/x")
    with pytest.raises(NotFoundError):
        store.get(store.uri_for("QL-CAP-0000000000000000", 1), tmp_path / "x")


def test_bad_ids_are_refused(built: BuiltCapsule, qlp_home: Path) -> None:
    store = LocalCapsuleStore(qlp_home / "capsules")
    with pytest.raises(CapsuleInputError, match="not a capsule id"):
        store.put("../../etc", 1, built.path)
    with pytest.raises(CapsuleInputError, match="version"):
        store.put(built.capsule_id, 0, built.path)
