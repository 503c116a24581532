"""File-level difference between two capsules (typically two versions of one intent).

Files are compared by the sha256 their manifests list; with `patch`, changed, added and
removed text files also get a unified diff (files over 1 MiB or not UTF-8 are "binary").
"""

from __future__ import annotations

import difflib
import zipfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from qlp.capsule.base import CapsuleInvalidError, VerifyReport
from qlp.capsule.format import PROJECT_PREFIX
from qlp.capsule.verify import check_entries, check_header, open_capsule

MAX_PATCH_BYTES = 1024 * 1024
# Manifest fields worth showing when they differ.
COMPARED_FIELDS = ("intent", "version", "parent", "models", "totals", "scores", "gates", "decision")

Status = Literal["added", "removed", "changed"]


@dataclass(frozen=True)
class FileChange:
    path: str
    status: Status
    old_sha256: str | None
    new_sha256: str | None
    old_size: int | None
    new_size: int | None
    patch: str | None = None  # unified diff, when asked for and both sides are text
    binary: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "status": self.status,
            "old_sha256": self.old_sha256,
            "new_sha256": self.new_sha256,
            "old_size": self.old_size,
            "new_size": self.new_size,
            "binary": self.binary,
            "patch": self.patch,
        }


@dataclass
class CapsuleDiff:
    a_id: str
    b_id: str
    a_version: int
    b_version: int
    changes: list[FileChange] = field(default_factory=list)
    unchanged: int = 0
    manifest_changes: dict[str, tuple[Any, Any]] = field(default_factory=dict)

    @property
    def identical(self) -> bool:
        return not self.changes and not self.manifest_changes

    def to_dict(self) -> dict[str, Any]:
        return {
            "a": {"capsule_id": self.a_id, "version": self.a_version},
            "b": {"capsule_id": self.b_id, "version": self.b_version},
            "changes": [c.to_dict() for c in self.changes],
            "unchanged": self.unchanged,
            "manifest_changes": {
                k: {"a": a, "b": b} for k, (a, b) in self.manifest_changes.items()
            },
        }


def _load(
    path: Path, verify: bool, public_key: Ed25519PublicKey | None
) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    report = VerifyReport(path=path, key_source="given" if public_key else "manifest")
    with open_capsule(path) as zf:
        listed = check_header(zf, report, public_key)
        if verify and listed is not None:
            check_entries(zf, listed, report)
    if report.manifest is None or listed is None:
        raise CapsuleInvalidError(f"cannot read {path}", report.problems)
    if verify and report.problems:
        raise CapsuleInvalidError(f"{path} does not verify", report.problems)
    return report.manifest, listed


def _text(zf: zipfile.ZipFile, name: str, size: int) -> list[str] | None:
    if size > MAX_PATCH_BYTES:
        return None
    with zf.open(name) as fh:
        data = fh.read(MAX_PATCH_BYTES + 1)
    if b"\0" in data:
        return None
    try:
        return data.decode("utf-8").splitlines(keepends=True)
    except UnicodeDecodeError:
        return None


def _patch(
    za: zipfile.ZipFile | None, zb: zipfile.ZipFile | None, change: FileChange
) -> tuple[str | None, bool]:
    old: list[str] | None = []
    new: list[str] | None = []
    if za is not None and change.old_size is not None:
        old = _text(za, change.path, change.old_size)
    if zb is not None and change.new_size is not None:
        new = _text(zb, change.path, change.new_size)
    if old is None or new is None:
        return None, True
    a_name = f"a/{change.path}" if change.status != "added" else "/dev/null"
    b_name = f"b/{change.path}" if change.status != "removed" else "/dev/null"
    lines = list(difflib.unified_diff(old, new, fromfile=a_name, tofile=b_name))
    text = "".join(
        line if line.endswith("\n") else line + "\n\\ No newline at end of file\n" for line in lines
    )
    return text, False


def diff_capsules(
    a: Path,
    b: Path,
    *,
    patch: bool = False,
    scope: Literal["project", "all"] = "project",
    verify: bool = True,
    public_key: Ed25519PublicKey | None = None,
) -> CapsuleDiff:
    """What changed from capsule `a` to capsule `b`. Both are verified first unless
    `verify` is False (then only their manifests and signatures are read)."""
    a, b = Path(a), Path(b)
    ma, ea = _load(a, verify, public_key)
    mb, eb = _load(b, verify, public_key)

    def keep(path: str) -> bool:
        return scope == "all" or path.startswith(PROJECT_PREFIX)

    result = CapsuleDiff(
        a_id=str(ma.get("capsule_id")),
        b_id=str(mb.get("capsule_id")),
        a_version=int(ma.get("version") or 0),
        b_version=int(mb.get("version") or 0),
    )
    for name in COMPARED_FIELDS:
        if ma.get(name) != mb.get(name):
            result.manifest_changes[name] = (ma.get(name), mb.get(name))
    changes: list[FileChange] = []
    for path in sorted(set(ea) | set(eb)):
        if not keep(path):
            continue
        old, new = ea.get(path), eb.get(path)
        if old is not None and new is not None and old["sha256"] == new["sha256"]:
            result.unchanged += 1
            continue
        status: Status = "changed" if old and new else ("added" if new else "removed")
        changes.append(
            FileChange(
                path=path,
                status=status,
                old_sha256=old["sha256"] if old else None,
                new_sha256=new["sha256"] if new else None,
                old_size=old["size"] if old else None,
                new_size=new["size"] if new else None,
            )
        )
    if patch and changes:
        with open_capsule(a) as za, open_capsule(b) as zb:
            for i, change in enumerate(changes):
                text, binary = _patch(
                    za if change.status != "added" else None,
                    zb if change.status != "removed" else None,
                    change,
                )
                changes[i] = replace(change, patch=text, binary=binary)
    result.changes = changes
    return result
