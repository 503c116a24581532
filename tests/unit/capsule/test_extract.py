"""Extraction refuses hostile zips, never overwrites unless forced, and leaves nothing behind."""

from __future__ import annotations

import zipfile
from collections.abc import Iterable
from pathlib import Path

import pytest

from qlp.capsule.base import BuiltCapsule, CapsuleInputError, CapsuleInvalidError
from qlp.capsule.extract import extract_capsule

from .conftest import PROJECT_FILES, flip_byte, keep, rewrite

Pairs = Iterable[tuple[zipfile.ZipInfo, bytes]]


def _nothing_left(parent: Path, dest: Path) -> None:
    assert not dest.exists()
    assert not [p for p in parent.iterdir() if ".extract-" in p.name]


def test_extracts_everything(built: BuiltCapsule, tmp_path: Path) -> None:
    dest = tmp_path / "x" / "out"
    result = extract_capsule(built.path, dest)
    assert result.capsule_id == built.capsule_id
    assert result.files == len(built.manifest["entries"]) + 2
    for rel, data in PROJECT_FILES.items():
        assert (dest / "project" / rel).read_bytes() == data
    assert (dest / "manifest.json").is_file() and (dest / "manifest.sig").is_file()
    assert not [p for p in dest.parent.iterdir() if ".extract-" in p.name]


def _crafted(built: BuiltCapsule, tmp_path: Path, name: str, attr: int | None = None) -> Path:
    info = zipfile.ZipInfo(name)
    if attr is not None:
        info.create_system = 3
        info.external_attr = attr << 16
    return rewrite(built.path, tmp_path / "crafted.qlcapsule", keep, extra=[(info, b"/etc/passwd")])


@pytest.mark.parametrize(
    ("name", "attr", "reason"),
    [
        ("../evil.txt", None, "unsafe entry: parent directory '..' in path"),
        ("project/../../evil.txt", None, "unsafe entry: parent directory '..' in path"),
        ("/tmp/evil.txt", None, "unsafe entry: absolute path"),
        ("C:/evil.txt", None, "unsafe entry: absolute path"),
        ("project\\..\\evil.txt", None, "unsafe entry: backslash in path"),
        ("project/link", 0o120777, "unsafe entry: symbolic link entry"),
        ("project/dev", 0o020644, "unsafe entry: not a regular file entry"),
        ("project/unlisted.py", None, "extra entry: not listed in the manifest"),
    ],
)
def test_refuses_crafted_entries(
    built: BuiltCapsule, tmp_path: Path, name: str, attr: int | None, reason: str
) -> None:
    crafted = _crafted(built, tmp_path, name, attr)
    dest = tmp_path / "dest"
    with pytest.raises(CapsuleInvalidError) as err:
        extract_capsule(crafted, dest)
    assert f"{name}: {reason}" in str(err.value)
    _nothing_left(tmp_path, dest)
    assert not (tmp_path / "evil.txt").exists()


def test_refuses_symlink_entry_listed_in_a_resigned_manifest(
    built: BuiltCapsule, tmp_path: Path
) -> None:
    """Even when the manifest lists the entry, a symlink entry is never written."""

    def tamper(info: zipfile.ZipInfo, data: bytes) -> Pairs:
        if info.filename == "project/app/main.py":
            info.create_system = 3
            info.external_attr = 0o120777 << 16
        yield info, data

    crafted = rewrite(built.path, tmp_path / "crafted.qlcapsule", tamper)
    with pytest.raises(CapsuleInvalidError, match=r"project/app/main\.py: unsafe entry: symbolic"):
        extract_capsule(crafted, tmp_path / "dest")
    _nothing_left(tmp_path, tmp_path / "dest")


def test_tampered_content_leaves_nothing(built: BuiltCapsule, tmp_path: Path) -> None:
    # the bad entry sorts last among the entries, so the others were already staged
    def tamper(info: zipfile.ZipInfo, data: bytes) -> Pairs:
        yield info, flip_byte(data) if info.filename == "transcript.jsonl" else data

    crafted = rewrite(built.path, tmp_path / "crafted.qlcapsule", tamper)
    dest = tmp_path / "dest"
    with pytest.raises(CapsuleInvalidError, match=r"transcript\.jsonl: sha256 mismatch"):
        extract_capsule(crafted, dest)
    _nothing_left(tmp_path, dest)


def test_never_overwrites_without_force(built: BuiltCapsule, tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    (dest / "project" / "app").mkdir(parents=True)
    mine = dest / "project" / "app" / "main.py"
    mine.write_text("my own work\n")
    (dest / "keep.txt").write_text("untouched\n")
    with pytest.raises(CapsuleInputError, match=r"already has 1 of the capsule's files.*--force"):
        extract_capsule(built.path, dest)
    assert mine.read_text() == "my own work\n"
    assert not (dest / "manifest.json").exists()  # nothing else was written either

    extract_capsule(built.path, dest, force=True)
    assert mine.read_bytes() == PROJECT_FILES["app/main.py"]
    assert (dest / "keep.txt").read_text() == "untouched\n"


def test_existing_empty_folder_is_fine(built: BuiltCapsule, tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    extract_capsule(built.path, dest)
    assert (dest / "README.md").is_file()


def test_never_writes_through_a_symlink_in_dest(built: BuiltCapsule, tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (dest / "project").symlink_to(elsewhere)
    with pytest.raises(CapsuleInputError, match="symbolic link"):
        extract_capsule(built.path, dest, force=True)
    assert list(elsewhere.iterdir()) == []


def test_dest_must_be_a_folder(built: BuiltCapsule, tmp_path: Path) -> None:
    dest = tmp_path / "file"
    dest.write_text("x")
    with pytest.raises(CapsuleInputError, match="not a folder"):
        extract_capsule(built.path, dest)


def test_wrong_key_refused(built: BuiltCapsule, tmp_path: Path) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    other = Ed25519PrivateKey.generate().public_key()
    with pytest.raises(CapsuleInvalidError, match=r"manifest\.sig: bad signature"):
        extract_capsule(built.path, tmp_path / "dest", public_key=other)
    _nothing_left(tmp_path, tmp_path / "dest")
