"""What agents produce, and the rules a file must satisfy before it touches the workspace."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePosixPath

from pydantic import BaseModel, ConfigDict, Field

# Names Windows reserves; a project holding them cannot be checked out there.
_RESERVED = frozenset(
    {"con", "prn", "aux", "nul"}
    | {f"com{i}" for i in range(1, 10)}
    | {f"lpt{i}" for i in range(1, 10)}
)
_FORBIDDEN_CHARS = frozenset('\x00<>:"|?*\\')


class FileOut(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: str
    content: str


class AgentOutput(BaseModel):
    """The contract every agent answer must meet: `{"files": [...], "notes": "..."}`."""

    model_config = ConfigDict(extra="forbid")

    files: list[FileOut] = Field(default_factory=list)
    notes: str = ""


@dataclass(frozen=True)
class FileLimits:
    max_files: int
    max_file_bytes: int
    max_path_length: int


class PathRuleError(ValueError):
    pass


def check_relative_path(raw: str, *, max_length: int) -> str:
    """Return the normalised POSIX path, or raise PathRuleError saying why it is refused."""
    if not raw:
        raise PathRuleError("empty path")
    if len(raw) > max_length:
        raise PathRuleError(f"path {raw[:40]!r}... is longer than {max_length} characters")
    bad = sorted(c for c in set(raw) if c in _FORBIDDEN_CHARS or ord(c) < 32)
    if bad:
        raise PathRuleError(f"path {raw!r} contains forbidden character(s) {bad!r}")
    if raw.startswith("/"):
        raise PathRuleError(f"path {raw!r} is absolute; paths must be relative to the project")
    parts = raw.split("/")
    for part in parts:
        if part in ("", "."):
            raise PathRuleError(f"path {raw!r} has an empty or '.' component")
        if part == "..":
            raise PathRuleError(f"path {raw!r} leaves the project with '..'")
        if part.split(".")[0].lower() in _RESERVED:
            raise PathRuleError(f"path {raw!r} uses the reserved device name {part!r}")
        if part.endswith((" ", ".")):
            raise PathRuleError(f"path {raw!r} has a component ending in a space or dot")
        if part == ".git":
            raise PathRuleError(f"path {raw!r} writes inside .git")
    return str(PurePosixPath(*parts))


def check_output(output: AgentOutput, limits: FileLimits) -> list[FileOut]:
    """Check every file of an answer; refuse the whole answer on the first violation."""
    if len(output.files) > limits.max_files:
        raise PathRuleError(
            f"the answer has {len(output.files)} files but at most {limits.max_files} are allowed"
        )
    seen: dict[str, str] = {}
    clean: list[FileOut] = []
    for f in output.files:
        path = check_relative_path(f.path, max_length=limits.max_path_length)
        size = len(f.content.encode("utf-8"))
        if size > limits.max_file_bytes:
            raise PathRuleError(
                f"file {path} is {size} bytes; the limit is {limits.max_file_bytes} bytes"
            )
        folded = path.lower()
        if folded in seen:
            raise PathRuleError(f"file {path} appears twice (as {seen[folded]!r} too)")
        seen[folded] = path
        clean.append(FileOut(path=path, content=f.content))
    # A path cannot be both a file and a folder of another file.
    for p in seen.values():
        for parent in PurePosixPath(p).parents:
            if str(parent) != "." and str(parent).lower() in seen:
                raise PathRuleError(f"{parent} is both a file and the folder of {p}")
    return clean
