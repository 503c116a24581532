"""The rules of the .qlcapsule format that building, verifying and extracting share.

docs/CAPSULE.md describes the format for people; this module is the same thing for code.
"""

from __future__ import annotations

import datetime as _dt
import decimal
import enum
import hashlib
import json
import re
import stat
import uuid
from collections.abc import Mapping
from functools import cache
from importlib import resources
from pathlib import PurePath
from typing import IO, Any

import jsonschema

SCHEMA_VERSION = 1
FORMAT_NAME = "qlcapsule"
SUFFIX = ".qlcapsule"

MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"
README = "README.md"
TRANSCRIPT = "transcript.jsonl"
SBOM = "sbom.cdx.json"
VALIDATION_REPORT = "reports/validation.json"
SECURITY_REPORT = "reports/security.sarif"
TESTS_REPORT = "reports/tests.xml"
PROJECT_PREFIX = "project/"
TASKS_PREFIX = "tasks/"

# Entries every capsule has besides the manifest and its signature.
REQUIRED_ENTRIES: tuple[str, ...] = (
    README,
    SBOM,
    TRANSCRIPT,
    SECURITY_REPORT,
    TESTS_REPORT,
    VALIDATION_REPORT,
)

# Fixed zip metadata: the same inputs must give the same bytes.
ZIP_DATE_TIME = (1980, 1, 1, 0, 0, 0)
ZIP_FILE_MODE = stat.S_IFREG | 0o644
ZIP_CREATE_SYSTEM = 3  # Unix: the mode in external_attr is meaningful
COMPRESS_LEVEL = 6

CHUNK = 1024 * 1024
MAX_MANIFEST_BYTES = 64 * 1024 * 1024
MAX_SIGNATURE_BYTES = 4096

CAPSULE_ID_RE = re.compile(r"^QL-CAP-[0-9a-f]{16}$")
TASK_FILE_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_DRIVE = re.compile(r"^[A-Za-z]:")


def _json_default(value: Any) -> Any:
    """Values that have one obvious, stable JSON spelling."""
    if isinstance(value, _dt.datetime | _dt.date | _dt.time):
        return value.isoformat()
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, uuid.UUID | decimal.Decimal | PurePath):
        return str(value)
    if isinstance(value, set | frozenset):
        return sorted(value, key=str)
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(f"a {type(value).__name__} cannot be stored in a capsule as JSON")


def stable_json_text(value: Any) -> str:
    """Sorted keys, no spaces, UTF-8 as is, no NaN: one spelling per value (no newline).

    U+2028 and U+2029 are escaped so that no reader splitting lines on them breaks a
    transcript line in two.
    """
    text = json.dumps(
        value,
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        allow_nan=False,
        default=_json_default,
    )
    return text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


def stable_json(value: Any) -> bytes:
    """`stable_json_text` as UTF-8 bytes with one trailing newline."""
    return (stable_json_text(value) + "\n").encode("utf-8")


def to_plain_json(value: Any) -> Any:
    """`value` as plain JSON types (what a reader of the capsule will see)."""
    return json.loads(stable_json_text(value))


def sha256_stream(stream: IO[bytes], limit: int | None = None) -> tuple[str, int]:
    """sha256 and length of a stream, read in chunks; stops after `limit` + 1 bytes."""
    digest = hashlib.sha256()
    size = 0
    while True:
        want = CHUNK if limit is None else min(CHUNK, limit + 1 - size)
        if want <= 0:
            break
        block = stream.read(want)
        if not block:
            break
        digest.update(block)
        size += len(block)
    return digest.hexdigest(), size


def entry_name_problem(name: str) -> str | None:
    """Why `name` is not a safe entry name, or None when it is."""
    if not name:
        return "empty name"
    if name.startswith("/") or _DRIVE.match(name):
        return "absolute path"
    if "\\" in name:
        return "backslash in path"
    if _CONTROL.search(name):
        return "control character in path"
    if name.endswith("/"):
        return "directory entry"
    parts = name.split("/")
    if any(p == ".." for p in parts):
        return "parent directory '..' in path"
    if any(p in ("", ".") for p in parts):
        return "empty or '.' path segment"
    if len(name.encode("utf-8", "surrogatepass")) > 1024:
        return "path longer than 1024 bytes"
    return None


def identity_body(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """What the capsule id is derived from: the manifest without its id and README entry.

    README.md names the capsule id, so it cannot be part of the id's own input; it is
    generated from the manifest alone, so leaving it out loses nothing.
    """
    body = {k: v for k, v in manifest.items() if k != "capsule_id"}
    entries = manifest.get("entries")
    if isinstance(entries, list):
        body["entries"] = [
            e for e in entries if not (isinstance(e, dict) and e.get("path") == README)
        ]
    return body


def derive_capsule_id(manifest: Mapping[str, Any]) -> str:
    digest = hashlib.sha256(stable_json(identity_body(manifest))).hexdigest()
    return f"QL-CAP-{digest[:16]}"


@cache
def manifest_schema() -> dict[str, Any]:
    """The published JSON Schema (docs/capsule-manifest.schema.json; a copy ships here)."""
    text = resources.files("qlp.capsule").joinpath("manifest.schema.json").read_text("utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


@cache
def _validator() -> jsonschema.protocols.Validator:
    schema = manifest_schema()
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    validator: jsonschema.protocols.Validator = cls(schema, format_checker=cls.FORMAT_CHECKER)
    return validator


def schema_problems(manifest: Any) -> list[str]:
    """Every way `manifest` breaks the schema, as 'at <json path>: <message>' lines."""
    problems = []
    for err in sorted(_validator().iter_errors(manifest), key=lambda e: list(map(str, e.path))):
        where = "/".join(str(p) for p in err.absolute_path) or "(top level)"
        message = err.message
        if len(message) > 300:
            message = message[:300] + "..."
        problems.append(f"at {where}: {message}")
    return problems
