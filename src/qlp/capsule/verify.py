"""Check a capsule: its zip structure, the signature over manifest.json, the manifest's schema
and id, and the size and sha256 of every entry. Every problem is named, not just the first.

Without a given public key the signature is checked against the key the manifest names:
that proves the capsule is intact, not who made it. The report says which key was used.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import stat
import zipfile
import zlib
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from qlp.capsule.base import CapsuleInvalidError, VerifyReport
from qlp.capsule.format import (
    CAPSULE_ID_RE,
    CHUNK,
    MANIFEST,
    MAX_MANIFEST_BYTES,
    MAX_SIGNATURE_BYTES,
    REQUIRED_ENTRIES,
    SIGNATURE,
    derive_capsule_id,
    entry_name_problem,
    schema_problems,
    stable_json,
)
from qlp.capsule.keys import parse_public_key_text, public_key_text
from qlp.errors import NotFoundError

# What a damaged or hostile zip member raises while it is read.
READ_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError, RuntimeError)


def read_error_text(exc: BaseException) -> str:
    """What went wrong reading a file, without the file's name: an OSError's text names its
    path, and a report may be sent to someone who must not learn the server's paths."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


@contextmanager
def open_capsule(path: Path, *, name: str | None = None) -> Iterator[zipfile.ZipFile]:
    """The capsule as a ZipFile; NotFoundError / CapsuleInvalidError when it cannot be one.
    Errors call it `name` (default: its path)."""
    path = Path(path)
    shown = str(path) if name is None else name
    if not path.is_file():
        raise NotFoundError(f"{shown}: no such capsule file")
    try:
        zf = zipfile.ZipFile(path, "r")
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise CapsuleInvalidError(
            f"{shown} is not a capsule (not a readable zip: {read_error_text(exc)})"
        ) from None
    with zf:
        yield zf


def _mode_problem(info: zipfile.ZipInfo) -> str | None:
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        return "symbolic link entry"
    if stat.S_IFMT(mode) not in (0, stat.S_IFREG):
        return "not a regular file entry"
    if info.flag_bits & 0x1:
        return "encrypted entry"
    return None


def _check_zip(zf: zipfile.ZipFile, report: VerifyReport) -> None:
    counts = Counter(info.filename for info in zf.infolist())
    for name, count in sorted(counts.items()):
        if count > 1:
            report.add(name, f"appears {count} times in the zip")
    for info in zf.infolist():
        problem = entry_name_problem(info.filename) or _mode_problem(info)
        if problem:
            report.add(info.filename, f"unsafe entry: {problem}")


def _read_small(zf: zipfile.ZipFile, name: str, limit: int, report: VerifyReport) -> bytes | None:
    try:
        info = zf.getinfo(name)
    except KeyError:
        return None
    if info.file_size > limit:
        report.add(name, f"too large ({info.file_size} bytes; at most {limit})")
        return None
    try:
        with zf.open(info) as fh:
            return fh.read(limit + 1)[:limit]
    except READ_ERRORS as exc:
        report.add(name, f"unreadable: {read_error_text(exc)}")
        return None


def _check_signature(
    manifest: dict[str, Any] | None,
    manifest_bytes: bytes,
    sig_bytes: bytes | None,
    given: Ed25519PublicKey | None,
    report: VerifyReport,
) -> None:
    named_text = None
    if manifest is not None:
        signing = manifest.get("signing")
        named_text = signing.get("public_key") if isinstance(signing, dict) else None
    named: Ed25519PublicKey | None = None
    if isinstance(named_text, str):
        try:
            named = parse_public_key_text(named_text)
        except ValueError as exc:
            report.add(MANIFEST, f"signing.public_key is not an ed25519 key ({exc})")
    key = given or named
    if given is not None:
        report.public_key = public_key_text(given)
        if named is not None and public_key_text(named) != report.public_key:
            report.add(
                MANIFEST,
                f"names the signing key {public_key_text(named)}, not the given key "
                f"{report.public_key}",
            )
    elif named is not None:
        report.public_key = public_key_text(named)
    if sig_bytes is None:
        report.add(SIGNATURE, "missing: the capsule is not signed")
        return
    try:
        signature = base64.b64decode(sig_bytes.strip(), validate=True)
    except (binascii.Error, ValueError):
        signature = b""
    if len(signature) != 64:
        report.add(SIGNATURE, "not a base64 ed25519 signature (64 bytes)")
        return
    if key is None:
        report.add(SIGNATURE, "cannot be checked: no public key given and none in the manifest")
        return
    try:
        key.verify(signature, manifest_bytes)
    except InvalidSignature:
        report.add(
            SIGNATURE,
            f"bad signature: it does not match manifest.json for key {report.public_key}",
        )
        return
    report.signature_valid = True


def _listed_entries(manifest: dict[str, Any], report: VerifyReport) -> dict[str, dict[str, Any]]:
    """path -> entry for every well-formed entry of the manifest."""
    raw = manifest.get("entries")
    listed: dict[str, dict[str, Any]] = {}
    for item in raw if isinstance(raw, list) else []:
        if not (
            isinstance(item, dict)
            and isinstance(item.get("path"), str)
            and isinstance(item.get("sha256"), str)
            and isinstance(item.get("size"), int)
        ):
            continue  # the schema check names it
        path = item["path"]
        if path in listed:
            report.add(path, "listed more than once in the manifest")
        listed[path] = item
    return listed


def check_header(
    zf: zipfile.ZipFile, report: VerifyReport, public_key: Ed25519PublicKey | None
) -> dict[str, dict[str, Any]] | None:
    """Everything but the entries' contents. Returns the listed entries (None when the
    manifest cannot be read at all)."""
    _check_zip(zf, report)
    manifest_bytes = _read_small(zf, MANIFEST, MAX_MANIFEST_BYTES, report)
    if manifest_bytes is None:
        if MANIFEST not in zf.NameToInfo:
            report.add(MANIFEST, "missing")
        return None
    manifest: dict[str, Any] | None = None
    try:
        parsed = json.loads(manifest_bytes.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        report.add(MANIFEST, f"not valid JSON ({exc})")
    else:
        if isinstance(parsed, dict):
            manifest = parsed
        else:
            report.add(MANIFEST, "not a JSON object")
    sig_bytes = _read_small(zf, SIGNATURE, MAX_SIGNATURE_BYTES, report)
    _check_signature(manifest, manifest_bytes, sig_bytes, public_key, report)
    if manifest is None:
        return None
    report.manifest = manifest
    capsule_id = manifest.get("capsule_id")
    report.capsule_id = capsule_id if isinstance(capsule_id, str) else None
    version = manifest.get("version")
    report.version = version if isinstance(version, int) else None

    for problem in schema_problems(manifest):
        report.add(MANIFEST, f"schema: {problem}")
    if stable_json(manifest) != manifest_bytes:
        report.add(MANIFEST, "not in canonical form (sorted keys, no spaces, one final newline)")
    if isinstance(capsule_id, str) and CAPSULE_ID_RE.match(capsule_id):
        derived = derive_capsule_id(manifest)
        if derived != capsule_id:
            report.add(MANIFEST, f"capsule_id {capsule_id} does not match its content ({derived})")
    listed = _listed_entries(manifest, report)
    for name in REQUIRED_ENTRIES:
        if name not in listed:
            report.add(name, "required entry is not listed in the manifest")
    return listed


def check_entries(
    zf: zipfile.ZipFile,
    listed: dict[str, dict[str, Any]],
    report: VerifyReport,
    sink: Path | None = None,
) -> None:
    """Size and sha256 of every listed entry, missing and extra entries. With `sink`, each
    entry is also written to sink/<path> as it is read."""
    present = {info.filename: info for info in zf.infolist()}
    for name in sorted(present):
        if name not in listed and name not in (MANIFEST, SIGNATURE):
            report.add(name, "extra entry: not listed in the manifest")
    for path, item in sorted(listed.items()):
        info = present.get(path)
        if info is None:
            report.add(path, "missing: listed in the manifest but not in the zip")
            continue
        if entry_name_problem(path) or _mode_problem(info):
            continue  # already named; never read or written
        size = int(item["size"])
        if info.file_size != size:
            report.add(
                path,
                f"size mismatch: the manifest says {size} bytes, the zip holds {info.file_size}",
            )
            continue
        try:
            digest, actual = _read_entry(zf, info, size, sink / path if sink else None)
        except READ_ERRORS as exc:
            report.add(path, f"unreadable: {read_error_text(exc)}")
            continue
        report.entries_checked += 1
        if actual != size:
            report.add(path, f"size mismatch: the manifest says {size} bytes, read {actual}")
        elif digest != item["sha256"]:
            report.add(path, "sha256 mismatch: the content differs from the manifest")


def _read_entry(
    zf: zipfile.ZipFile, info: zipfile.ZipInfo, size: int, target: Path | None
) -> tuple[str, int]:
    digest = hashlib.sha256()
    read = 0
    out = None
    if target is not None:
        target.parent.mkdir(parents=True, exist_ok=True)
        out = target.open("xb")
    try:
        with zf.open(info) as fh:
            # Never read more than the manifest promised (plus one byte, to notice more).
            while read <= size and (block := fh.read(min(CHUNK, size + 1 - read))):
                digest.update(block)
                read += len(block)
                if out is not None:
                    out.write(block)
    finally:
        if out is not None:
            out.close()
    return digest.hexdigest(), read


def verify_capsule(
    path: Path,
    public_key: Ed25519PublicKey | None = None,
    *,
    contents: bool = True,
    name: str | None = None,
) -> VerifyReport:
    """Check the capsule at `path`. `contents=False` skips reading the entries (for a quick
    look at the manifest and its signature). `name` is what errors call the file (the API
    says "the request body", never its temporary path)."""
    report = VerifyReport(path=Path(path), key_source="given" if public_key else "manifest")
    with open_capsule(Path(path), name=name) as zf:
        listed = check_header(zf, report, public_key)
        if contents and listed is not None:
            check_entries(zf, listed, report)
    return report
