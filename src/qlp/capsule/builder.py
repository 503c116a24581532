"""Build a .qlcapsule: deterministic bytes, streamed, signed.

Two passes over the project: the first hashes every file (the manifest comes first in the
zip and lists every digest), the second streams each file into the zip and hashes it again,
so a file that changed in between is caught instead of packaged under a wrong digest. No
file is ever read whole into memory; the transcript is spooled to a temporary file.
"""

from __future__ import annotations

import base64
import contextlib
import fnmatch
import hashlib
import os
import tempfile
import zipfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from qlp import __version__
from qlp.capsule.base import (
    BuiltCapsule,
    CapsuleError,
    CapsuleInputError,
    CapsuleInputs,
    Entry,
    GatesInput,
    ModelUse,
    ReviewDecision,
    Totals,
)
from qlp.capsule.format import (
    CAPSULE_ID_RE,
    CHUNK,
    COMPRESS_LEVEL,
    FORMAT_NAME,
    MANIFEST,
    PROJECT_PREFIX,
    README,
    SBOM,
    SCHEMA_VERSION,
    SECURITY_REPORT,
    SIGNATURE,
    TASK_FILE_ID_RE,
    TASKS_PREFIX,
    TESTS_REPORT,
    TRANSCRIPT,
    VALIDATION_REPORT,
    ZIP_CREATE_SYSTEM,
    ZIP_DATE_TIME,
    ZIP_FILE_MODE,
    derive_capsule_id,
    entry_name_problem,
    schema_problems,
    stable_json,
    to_plain_json,
)
from qlp.capsule.keys import public_key_text
from qlp.capsule.readme import render_readme
from qlp.capsule.sbom import build_sbom
from qlp.errors import NotRegularFileError
from qlp.safefiles import kind_of, open_regular

EMPTY_SARIF: dict[str, Any] = {
    "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
    "version": "2.1.0",
    "runs": [],
}
EMPTY_JUNIT = (
    '<?xml version="1.0" encoding="UTF-8"?>\n'
    '<testsuites name="no tests" tests="0" failures="0" errors="0" skipped="0"/>\n'
)


@dataclass(frozen=True)
class _Source:
    """Where an entry's bytes come from: in memory, or a file streamed from disk."""

    entry: Entry
    data: bytes | None = None
    file: Path | None = None


# -- project files ---------------------------------------------------------------------------


def _excluded(rel: str, patterns: Sequence[str]) -> bool:
    name = rel.rsplit("/", 1)[-1]
    return any(fnmatch.fnmatchcase(name, p) or fnmatch.fnmatchcase(rel, p) for p in patterns)


def scan_project(root: Path, exclude: Sequence[str] = ()) -> list[tuple[str, Path]]:
    """Every regular file under `root` as (relative POSIX path, path), sorted by path.

    Symlinks, FIFOs, sockets, devices and names that are not safe entry names are refused,
    all of them named (with what they are) in one error. Refused, not skipped: a capsule is
    the project as it stands, and one that silently left out a file of the tree would not
    be; and nothing here opens them (only `lstat`-like checks), so a FIFO cannot make the
    build wait. A file swapped for one after this scan is refused when it is opened
    (`_open_regular`).
    """
    if not root.is_dir():
        raise CapsuleInputError(f"the project folder {root} does not exist or is not a folder")
    found: list[tuple[str, Path]] = []
    refused: list[str] = []

    def walk(folder: Path, prefix: str) -> None:
        with os.scandir(folder) as it:
            items = sorted(it, key=lambda e: e.name)
        for item in items:
            rel = prefix + item.name
            try:
                rel.encode("utf-8")
            except UnicodeEncodeError:
                refused.append(f"{rel.encode('utf-8', 'surrogateescape')!r} (name is not UTF-8)")
                continue
            if _excluded(rel, exclude):
                continue
            if item.is_symlink():
                refused.append(f"{rel} (symbolic link)")
            elif item.is_dir(follow_symlinks=False):
                walk(Path(item.path), rel + "/")
            elif item.is_file(follow_symlinks=False):
                problem = entry_name_problem(PROJECT_PREFIX + rel)
                if problem:
                    refused.append(f"{rel} ({problem})")
                else:
                    found.append((rel, Path(item.path)))
            else:
                try:
                    kind = kind_of(item.stat(follow_symlinks=False).st_mode)
                except OSError:
                    kind = "gone while the project was read"
                refused.append(f"{rel} ({kind}, not a regular file)")

    walk(root, "")
    if refused:
        shown = ", ".join(refused[:10]) + (
            f" and {len(refused) - 10} more" if len(refused) > 10 else ""
        )
        raise CapsuleInputError(f"the project has files that cannot go into a capsule: {shown}")
    found.sort(key=lambda pair: pair[0])
    return found


@contextlib.contextmanager
def _open_regular(path: Path, shown: str) -> Iterator[IO[bytes]]:
    """Open without following a symlink or waiting on a FIFO swapped in after the scan."""
    try:
        fh = open_regular(path, shown=shown)
    except NotRegularFileError as exc:
        raise CapsuleInputError(f"{exc.message}: it changed after the scan") from None
    except OSError as exc:
        raise CapsuleInputError(f"{shown}: cannot be read ({exc.strerror})") from None
    with fh:
        yield fh


def _hash_file(path: Path, shown: str) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with _open_regular(path, shown) as fh:
        while block := fh.read(CHUNK):
            digest.update(block)
            size += len(block)
    return digest.hexdigest(), size


# -- normalising the inputs ------------------------------------------------------------------


def _models(models: Sequence[ModelUse | Mapping[str, str]]) -> list[dict[str, str]]:
    seen: set[tuple[str, str]] = set()
    for m in models:
        pair = (m.provider, m.model) if isinstance(m, ModelUse) else (m["provider"], m["model"])
        seen.add((str(pair[0]), str(pair[1])))
    return [{"provider": p, "model": m} for p, m in sorted(seen)]


def _totals(totals: Totals | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(totals, Totals):
        return asdict(totals)
    try:
        return asdict(Totals(**dict(totals)))
    except TypeError as exc:
        raise CapsuleInputError(f"totals: {exc}") from None


def _json_bytes(value: Any, what: str) -> bytes:
    try:
        return stable_json(value)
    except (TypeError, ValueError) as exc:
        raise CapsuleInputError(f"{what} cannot be stored as JSON: {exc}") from None


def _gates(gates: GatesInput) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    if isinstance(gates, Mapping):
        out = [{"name": str(k), "passed": v, "detail": ""} for k, v in gates.items()]
    else:
        for g in gates:
            if isinstance(g, Mapping):
                out.append(
                    {"name": g["name"], "passed": g.get("passed"), "detail": g.get("detail") or ""}
                )
            else:
                out.append({"name": g.name, "passed": g.passed, "detail": g.detail or ""})
    names = [g["name"] for g in out]
    if len(set(names)) != len(names):
        raise CapsuleInputError(f"gate names repeat: {', '.join(names)}")
    return out


def _decision(decision: ReviewDecision | Mapping[str, str] | None) -> dict[str, str] | None:
    if decision is None:
        return None
    if isinstance(decision, ReviewDecision):
        return asdict(decision)
    return {
        "decision": decision["decision"],
        "by": decision["by"],
        "at": decision["at"],
        "reason": decision.get("reason") or "",
    }


def _tasks(tasks: Sequence[Mapping[str, Any]]) -> list[_Source]:
    out: list[_Source] = []
    seen: set[str] = set()
    for task in tasks:
        task_id = str(task.get("id", ""))
        if not TASK_FILE_ID_RE.match(task_id):
            raise CapsuleInputError(f"task id {task_id!r} cannot name a file tasks/<id>.json")
        if task_id in seen:
            raise CapsuleInputError(f"task id {task_id} appears twice")
        seen.add(task_id)
        name = f"{TASKS_PREFIX}{task_id}.json"
        out.append(_memory(name, _json_bytes(task, name)))
    return out


def _memory(name: str, data: bytes) -> _Source:
    return _Source(Entry(name, hashlib.sha256(data).hexdigest(), len(data)), data=data)


def _spool_transcript(records: Iterable[Mapping[str, Any]], folder: Path) -> _Source:
    path = folder / "transcript.jsonl"
    digest = hashlib.sha256()
    size = 0
    with path.open("wb") as fh:
        for number, record in enumerate(records, start=1):
            line = _json_bytes(record, f"{TRANSCRIPT} record {number}")
            fh.write(line)
            digest.update(line)
            size += len(line)
    return _Source(Entry(TRANSCRIPT, digest.hexdigest(), size), file=path)


# -- the zip -----------------------------------------------------------------------------------


def _zipinfo(name: str, size: int) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=ZIP_DATE_TIME)
    info.compress_type = zipfile.ZIP_DEFLATED
    # ZipFile.open(info, "w") takes the level from the ZipInfo; the attribute is private
    # before Python 3.13 (compress_level after), and setattr works on both.
    setattr(info, "_compresslevel", COMPRESS_LEVEL)  # noqa: B010
    info.create_system = ZIP_CREATE_SYSTEM
    info.external_attr = ZIP_FILE_MODE << 16
    # A known size lets zipfile decide on ZIP64 up front, the same way every time.
    info.file_size = size
    return info


def _write_entry(zf: zipfile.ZipFile, source: _Source) -> None:
    entry = source.entry
    with zf.open(_zipinfo(entry.path, entry.size), "w") as out:
        if source.data is not None:
            out.write(source.data)
            return
        assert source.file is not None
        digest = hashlib.sha256()
        size = 0
        with _open_regular(source.file, entry.path) as fh:
            while block := fh.read(CHUNK):
                out.write(block)
                digest.update(block)
                size += len(block)
    if digest.hexdigest() != entry.sha256 or size != entry.size:
        raise CapsuleInputError(f"{entry.path}: changed while it was being packaged; build again")


def _publish(tmp: Path, out_path: Path, overwrite: bool) -> None:
    os.chmod(tmp, 0o644)
    if overwrite:
        os.replace(tmp, out_path)
        return
    try:
        os.link(tmp, out_path)  # fails when out_path exists: never replaced by accident
    except FileExistsError:
        raise CapsuleInputError(f"{out_path} already exists") from None
    except OSError:  # a filesystem without hard links
        if out_path.exists():
            raise CapsuleInputError(f"{out_path} already exists") from None
        os.replace(tmp, out_path)


def _file_sha256(path: Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as fh:
        while block := fh.read(CHUNK):
            digest.update(block)
            size += len(block)
    return digest.hexdigest(), size


def build_capsule(
    inputs: CapsuleInputs,
    out_path: Path,
    signing_key: Ed25519PrivateKey,
    *,
    overwrite: bool = False,
) -> BuiltCapsule:
    """Package `inputs` as a signed capsule at `out_path` (written atomically)."""
    out_path = Path(out_path)
    if out_path.exists() and not overwrite:
        raise CapsuleInputError(f"{out_path} already exists")
    if not inputs.intent_id.strip() or not inputs.intent_text.strip():
        raise CapsuleInputError("a capsule needs the intent id and text")
    if inputs.version < 1:
        raise CapsuleInputError(f"capsule version must be 1 or more, not {inputs.version}")
    if inputs.parent is not None and not CAPSULE_ID_RE.match(inputs.parent):
        raise CapsuleInputError(f"parent {inputs.parent!r} is not a capsule id")

    project = scan_project(Path(inputs.project_dir), inputs.exclude)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_path.parent, prefix=".qlcapsule-build-") as tmp:
        work = Path(tmp)
        sources: list[_Source] = []
        for rel, path in project:
            name = PROJECT_PREFIX + rel
            sha, size = _hash_file(path, name)
            sources.append(_Source(Entry(name, sha, size), file=path))
        sources += _tasks(inputs.tasks)
        sources.append(
            _memory(VALIDATION_REPORT, _json_bytes(inputs.validation or {}, VALIDATION_REPORT))
        )
        sources.append(
            _memory(SECURITY_REPORT, _json_bytes(inputs.sarif or EMPTY_SARIF, SECURITY_REPORT))
        )
        junit = inputs.junit_xml if inputs.junit_xml is not None else EMPTY_JUNIT
        sources.append(_memory(TESTS_REPORT, junit.encode("utf-8")))
        sources.append(_spool_transcript(inputs.transcript, work))
        sbom = build_sbom(
            project,
            name=inputs.intent_id,
            version=str(inputs.version),
            tool_version=__version__,
        )
        sources.append(_memory(SBOM, stable_json(sbom)))

        manifest: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION,
            "format": FORMAT_NAME,
            "version": inputs.version,
            "parent": inputs.parent,
            "intent": {"id": inputs.intent_id, "text": inputs.intent_text},
            "plan": dict(inputs.plan),
            "models": _models(inputs.models),
            "totals": _totals(inputs.totals),
            "scores": dict(inputs.scores),
            "gates": _gates(inputs.gates),
            "decision": _decision(inputs.decision),
            "notes": inputs.notes,
            "generator": {"name": "qlp", "version": __version__},
            "signing": {
                "algorithm": "ed25519",
                "public_key": public_key_text(signing_key),
                "signature_entry": SIGNATURE,
            },
            "entries": [s.entry.as_dict() for s in sorted(sources, key=lambda s: s.entry.path)],
        }
        try:
            manifest = to_plain_json(manifest)
        except (TypeError, ValueError) as exc:
            raise CapsuleInputError(f"the capsule metadata is not valid JSON: {exc}") from None
        manifest["capsule_id"] = derive_capsule_id(manifest)
        readme = render_readme(manifest).encode("utf-8")
        sources.append(_memory(README, readme))
        sources.sort(key=lambda s: s.entry.path)
        manifest["entries"] = [s.entry.as_dict() for s in sources]

        problems = schema_problems(manifest)
        if problems:
            raise CapsuleInputError("the capsule manifest is not valid: " + "; ".join(problems[:5]))
        manifest_bytes = stable_json(manifest)
        signature = base64.b64encode(signing_key.sign(manifest_bytes)) + b"\n"

        tmp_zip = work / "capsule.zip"
        with zipfile.ZipFile(tmp_zip, "w", allowZip64=True) as zf:
            _write_entry(zf, _memory(MANIFEST, manifest_bytes))
            _write_entry(zf, _memory(SIGNATURE, signature))
            for source in sources:
                _write_entry(zf, source)
        with tmp_zip.open("rb") as fh:
            os.fsync(fh.fileno())
        sha, size = _file_sha256(tmp_zip)
        try:
            _publish(tmp_zip, out_path, overwrite)
        except OSError as exc:
            raise CapsuleError(f"cannot write {out_path}: {exc.strerror}") from None
    return BuiltCapsule(
        path=out_path, capsule_id=manifest["capsule_id"], sha256=sha, size=size, manifest=manifest
    )
