"""Unpack a capsule safely: verified as it is written, into a staging folder beside the
destination, moved into place only when every entry checked out.

Refused: names that climb out ('../'), absolute names, symlink or other non-file entries,
entries the manifest does not list, a bad signature or digest, and existing files unless
`force`. A refused capsule leaves nothing behind.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from qlp.capsule.base import CapsuleInputError, CapsuleInvalidError, VerifyReport
from qlp.capsule.format import MANIFEST, SIGNATURE
from qlp.capsule.verify import check_entries, check_header, open_capsule


@dataclass(frozen=True)
class ExtractResult:
    dest: Path
    capsule_id: str
    files: int
    report: VerifyReport


def _targets(names: list[str], dest: Path, force: bool) -> None:
    """Refuse existing files (unless force) and any symlink inside `dest` on the way."""
    existing: list[str] = []
    for name in names:
        parts = name.split("/")
        current = dest
        for depth, part in enumerate(parts, start=1):
            current = current / part
            try:
                info = current.lstat()
            except FileNotFoundError:
                break
            if stat.S_ISLNK(info.st_mode):
                raise CapsuleInputError(
                    f"{current} is a symbolic link; refusing to write through it"
                )
            if depth < len(parts):
                if not stat.S_ISDIR(info.st_mode):
                    raise CapsuleInputError(
                        f"{current} is a file; the capsule needs a folder there"
                    )
            elif stat.S_ISDIR(info.st_mode):
                raise CapsuleInputError(f"{current} is a folder; the capsule has a file there")
            else:
                existing.append(name)
    if existing and not force:
        shown = ", ".join(existing[:5]) + (
            f" and {len(existing) - 5} more" if len(existing) > 5 else ""
        )
        raise CapsuleInputError(
            f"{dest} already has {len(existing)} of the capsule's files ({shown}); "
            "use --force to overwrite them"
        )


def extract_capsule(
    path: Path,
    dest: Path,
    *,
    force: bool = False,
    public_key: Ed25519PublicKey | None = None,
) -> ExtractResult:
    """Verify the capsule at `path` and unpack all of it (manifest, project/, reports...)
    into the folder `dest`."""
    dest = Path(dest).absolute()
    if os.path.lexists(dest):
        info = dest.lstat()
        if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
            raise CapsuleInputError(f"{dest} exists and is not a folder")
    report = VerifyReport(path=Path(path), key_source="given" if public_key else "manifest")
    with open_capsule(Path(path)) as zf:
        listed = check_header(zf, report, public_key)
        if report.problems or listed is None:
            raise CapsuleInvalidError(f"refusing to extract {path}", report.problems)
        names = sorted([MANIFEST, SIGNATURE, *listed])
        _targets(names, dest, force)

        dest.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.extract-", dir=dest.parent))
        try:
            out = staging / "out"
            out.mkdir()  # made with the caller's umask, unlike mkdtemp's 0700
            for name in (MANIFEST, SIGNATURE):
                with zf.open(name) as src, (out / name).open("xb") as dst:
                    shutil.copyfileobj(src, dst)
            check_entries(zf, listed, report, sink=out)
            if report.problems:
                raise CapsuleInvalidError(f"refusing to extract {path}", report.problems)
            if not os.path.lexists(dest):
                os.rename(out, dest)
            else:
                for name in names:
                    target = dest / name
                    target.parent.mkdir(parents=True, exist_ok=True)
                    os.replace(out / name, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    assert report.capsule_id is not None
    return ExtractResult(dest=dest, capsule_id=report.capsule_id, files=len(names), report=report)
