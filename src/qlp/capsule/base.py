"""The capsule port: what goes into a capsule, what comes out of checking one, where it is kept.

Adapters beside this file: local_store.py (a folder under QLP_HOME) and azure_store.py
(Azure Blob Storage). The format itself lives in format.py, builder.py, verify.py,
extract.py and diff.py; docs/CAPSULE.md describes it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from qlp.capsule.format import CAPSULE_ID_RE, SUFFIX
from qlp.errors import ConfigError, QLPError, UserInputError

# -- errors ---------------------------------------------------------------------------------


class CapsuleError(QLPError):
    """A capsule could not be built, read or stored."""


class CapsuleInputError(UserInputError):
    """What was given to build or extract a capsule is wrong (symlink in the project, ...)."""


class CapsuleInvalidError(CapsuleError):
    """A capsule failed verification; `problems` names each thing that is wrong."""

    def __init__(self, message: str, problems: Sequence[Problem] = ()) -> None:
        self.problems = list(problems)
        if self.problems:
            shown = "; ".join(str(p) for p in self.problems[:8])
            more = len(self.problems) - 8
            message = f"{message}: {shown}" + (f"; and {more} more" if more > 0 else "")
        super().__init__(message)


class CapsuleStorageError(CapsuleError):
    """The capsule store refused or failed an operation."""


class SigningKeyError(ConfigError):
    """The signing key is missing, malformed or not kept privately enough."""


# -- what a capsule is built from ------------------------------------------------------------


@dataclass(frozen=True)
class ModelUse:
    provider: str
    model: str


@dataclass(frozen=True)
class Totals:
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float | None = None  # None: no price was known for any call
    unpriced_calls: int = 0  # calls of models without a price (cost is then "at least")


@dataclass(frozen=True)
class GateResult:
    name: str
    passed: bool | None  # None: the gate did not apply
    detail: str = ""


@dataclass(frozen=True)
class ReviewDecision:
    decision: str  # e.g. approve, reject, request_changes
    by: str  # a user name, or "gate" for an automatic decision
    at: str  # ISO 8601 date-time with a zone, e.g. 2025-01-31T12:00:00Z
    reason: str = ""


class GateLike(Protocol):
    """Anything with a gate's three fields (GateResult, qlp.review.gate.Gate)."""

    @property
    def name(self) -> str: ...

    @property
    def passed(self) -> bool | None: ...

    @property
    def detail(self) -> str: ...


GatesInput = Sequence[GateLike | Mapping[str, Any]] | Mapping[str, bool | None]


@dataclass
class CapsuleInputs:
    """Everything a capsule holds. The same inputs give the same capsule bytes.

    `project_dir`: every regular file under it becomes project/<relative path> (sorted);
    symlinks and special files are refused. `exclude`: glob patterns matched against each
    path segment and the whole relative path (e.g. "__pycache__", "*.pyc"), skipped.
    `tasks`: one mapping per task, each with an "id" -> tasks/<id>.json.
    `transcript`: iterated once, streamed to transcript.jsonl (one JSON object a line).
    Reports left as None are written as empty but well-formed documents.
    `notes`: extra text for the end of README.md (kept in the manifest).
    """

    intent_id: str
    intent_text: str
    project_dir: Path
    version: int = 1
    parent: str | None = None
    plan: Mapping[str, Any] = field(default_factory=dict)
    models: Sequence[ModelUse | Mapping[str, str]] = ()
    totals: Totals | Mapping[str, Any] = field(default_factory=Totals)
    scores: Mapping[str, int | None] = field(default_factory=dict)
    gates: GatesInput = ()
    decision: ReviewDecision | Mapping[str, str] | None = None
    tasks: Sequence[Mapping[str, Any]] = ()
    validation: Mapping[str, Any] | None = None
    sarif: Mapping[str, Any] | None = None
    junit_xml: str | None = None
    transcript: Iterable[Mapping[str, Any]] = ()
    notes: str | None = None
    exclude: Sequence[str] = ()


@dataclass(frozen=True)
class Entry:
    path: str
    sha256: str
    size: int

    def as_dict(self) -> dict[str, Any]:
        return {"path": self.path, "sha256": self.sha256, "size": self.size}


@dataclass(frozen=True)
class BuiltCapsule:
    path: Path
    capsule_id: str
    sha256: str  # of the whole .qlcapsule file
    size: int
    manifest: dict[str, Any]

    @property
    def version(self) -> int:
        return int(self.manifest["version"])

    @property
    def public_key(self) -> str:
        return str(self.manifest["signing"]["public_key"])


# -- what checking a capsule says ------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a capsule; `entry` names the zip entry when there is one."""

    entry: str | None
    message: str

    def __str__(self) -> str:
        return f"{self.entry}: {self.message}" if self.entry else self.message


KeySource = Literal["given", "manifest"]


@dataclass
class VerifyReport:
    path: Path
    key_source: KeySource
    public_key: str | None = None  # the key the signature was checked with
    capsule_id: str | None = None
    version: int | None = None
    signature_valid: bool = False
    entries_checked: int = 0
    problems: list[Problem] = field(default_factory=list)
    manifest: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        return not self.problems

    def add(self, entry: str | None, message: str) -> None:
        self.problems.append(Problem(entry, message))

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "ok": self.ok,
            "capsule_id": self.capsule_id,
            "version": self.version,
            "signature_valid": self.signature_valid,
            "key_source": self.key_source,
            "public_key": self.public_key,
            "entries_checked": self.entries_checked,
            "problems": [{"entry": p.entry, "message": p.message} for p in self.problems],
        }


# -- where capsules are kept ------------------------------------------------------------------


class CapsuleStore(Protocol):
    """Keeps built capsule files. Synchronous: call from async code via asyncio.to_thread.

    put: stores the file atomically (a reader never sees half a capsule) and returns its
      URI. An object already there with the same bytes is kept and its URI returned; one
      with other bytes raises CapsuleStorageError (never overwritten).
    get: copies the capsule at `uri` to `dest` (replacing it atomically), checks its size
      and sha256 against what was stored, and returns `dest`.
    exists / delete: delete is for cleaning up after a failed database insert; deleting a
      missing object is not an error.
    """

    kind: str

    def uri_for(self, capsule_id: str, version: int) -> str: ...

    def put(self, capsule_id: str, version: int, path: Path) -> str: ...

    def get(self, uri: str, dest: Path) -> Path: ...

    def exists(self, uri: str) -> bool: ...

    def delete(self, uri: str) -> None: ...


def object_name(capsule_id: str, version: int) -> str:
    """The store-relative name of a capsule: <capsule id>/v<version>.qlcapsule."""
    if not CAPSULE_ID_RE.match(capsule_id):
        raise CapsuleInputError(f"{capsule_id!r} is not a capsule id (QL-CAP-<16 hex>)")
    if version < 1:
        raise CapsuleInputError(f"capsule version must be 1 or more, not {version}")
    return f"{capsule_id}/v{version}{SUFFIX}"
