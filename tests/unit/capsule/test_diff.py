"""File-level diff between two versions of a capsule."""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from qlp.capsule.base import BuiltCapsule, CapsuleInvalidError
from qlp.capsule.builder import build_capsule
from qlp.capsule.diff import diff_capsules

from .conftest import flip_byte, make_inputs, rewrite


@pytest.fixture
def two_versions(
    tmp_path: Path, project: Path, signing_key: Ed25519PrivateKey
) -> tuple[BuiltCapsule, BuiltCapsule]:
    a = build_capsule(make_inputs(project), tmp_path / "a.qlcapsule", signing_key)
    (project / "app" / "main.py").write_text("print('v2')\n")
    (project / "assets" / "logo.bin").write_bytes(b"\0\1\2")
    (project / "tests" / "test_main.py").unlink()
    (project / "app" / "users.py").write_text("USERS = []\n")
    b = build_capsule(
        make_inputs(project, version=2, parent=a.capsule_id, scores={"overall": 91}),
        tmp_path / "b.qlcapsule",
        signing_key,
    )
    return a, b


def test_lists_added_removed_changed(two_versions: tuple[BuiltCapsule, BuiltCapsule]) -> None:
    a, b = two_versions
    result = diff_capsules(a.path, b.path)
    got = {(c.path, c.status) for c in result.changes}
    assert got == {
        ("project/app/main.py", "changed"),
        ("project/assets/logo.bin", "changed"),
        ("project/tests/test_main.py", "removed"),
        ("project/app/users.py", "added"),
    }
    assert result.unchanged == 5  # 8 files before, 3 of them touched
    assert result.manifest_changes["version"] == (1, 2)
    assert result.manifest_changes["scores"][1] == {"overall": 91}
    assert all(c.patch is None for c in result.changes)
    assert result.to_dict()["b"]["capsule_id"] == b.capsule_id


def test_patch_for_text_files(two_versions: tuple[BuiltCapsule, BuiltCapsule]) -> None:
    a, b = two_versions
    changes = {c.path: c for c in diff_capsules(a.path, b.path, patch=True).changes}
    main = changes["project/app/main.py"]
    assert main.patch is not None
    assert main.patch.startswith("--- a/project/app/main.py\n+++ b/project/app/main.py\n")
    assert "+print('v2')\n" in main.patch and "-app = FastAPI()\n" in main.patch
    assert changes["project/assets/logo.bin"].binary
    assert changes["project/assets/logo.bin"].patch is None
    assert "+++ b/project/app/users.py" in (changes["project/app/users.py"].patch or "")
    assert "--- a/project/tests/test_main.py\n+++ /dev/null" in (
        changes["project/tests/test_main.py"].patch or ""
    )


def test_all_scope_includes_reports(two_versions: tuple[BuiltCapsule, BuiltCapsule]) -> None:
    a, b = two_versions
    paths = {c.path for c in diff_capsules(a.path, b.path, scope="all").changes}
    assert {"README.md", "sbom.cdx.json"} <= paths  # both name the version
    assert "reports/validation.json" not in paths


def test_same_capsule_is_identical(built: BuiltCapsule, tmp_path: Path) -> None:
    copy = tmp_path / "copy.qlcapsule"
    shutil.copy(built.path, copy)
    assert diff_capsules(built.path, copy).identical


def test_refuses_a_tampered_side(built: BuiltCapsule, tmp_path: Path) -> None:
    def tamper(info: zipfile.ZipInfo, data: bytes):  # type: ignore[no-untyped-def]
        yield info, flip_byte(data) if info.filename == "project/app/main.py" else data

    bad = rewrite(built.path, tmp_path / "bad.qlcapsule", tamper)
    with pytest.raises(CapsuleInvalidError, match=r"does not verify: project/app/main\.py"):
        diff_capsules(built.path, bad)
    # without verification the manifests agree, so no change is seen
    assert diff_capsules(built.path, bad, verify=False).identical
