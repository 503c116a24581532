"""Which files of a project are of which kind, from their names (and a shell script's #! line).

The walk never follows a symbolic link (code run in the sandbox may have left some) and skips
folders that hold tools' caches, version control or vendored dependencies.
"""

from __future__ import annotations

import enum
import os
import stat
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from qlp.errors import NotRegularFileError
from qlp.safefiles import read_regular


class Kind(enum.StrEnum):
    PYTHON = "python"
    JAVASCRIPT = "javascript"
    TYPESCRIPT = "typescript"  # .ts/.tsx/.mts/.cts and .jsx (node cannot parse JSX)
    SHELL = "shell"
    JSON = "json"
    YAML = "yaml"
    TOML = "toml"
    TERRAFORM = "terraform"
    DOCKERFILE = "dockerfile"
    MARKDOWN = "markdown"
    OTHER = "other"


SKIP_DIRS = frozenset(
    {
        ".git",
        ".hg",
        ".svn",
        "node_modules",
        "__pycache__",
        ".venv",
        "venv",
        ".tox",
        ".nox",
        ".mypy_cache",
        ".pytest_cache",
        ".ruff_cache",
        ".terraform",
        ".qlp",
    }
)

_BY_SUFFIX = {
    ".py": Kind.PYTHON,
    ".js": Kind.JAVASCRIPT,
    ".mjs": Kind.JAVASCRIPT,
    ".cjs": Kind.JAVASCRIPT,
    ".ts": Kind.TYPESCRIPT,
    ".tsx": Kind.TYPESCRIPT,
    ".mts": Kind.TYPESCRIPT,
    ".cts": Kind.TYPESCRIPT,
    ".jsx": Kind.TYPESCRIPT,
    ".sh": Kind.SHELL,
    ".bash": Kind.SHELL,
    ".json": Kind.JSON,
    ".yml": Kind.YAML,
    ".yaml": Kind.YAML,
    ".toml": Kind.TOML,
    ".tf": Kind.TERRAFORM,
    ".md": Kind.MARKDOWN,
    ".markdown": Kind.MARKDOWN,
    ".dockerfile": Kind.DOCKERFILE,
}
_SHELLS = frozenset({"sh", "bash", "dash", "ksh"})
_JS_TEST_DIRS = frozenset({"test", "tests", "__tests__"})


def kind_of(path: str, head: bytes = b"") -> Kind:
    """The kind of a project path; `head` (the file's first bytes) recognises #! scripts."""
    p = PurePosixPath(path)
    name = p.name
    if name in ("Dockerfile", "Containerfile") or name.startswith(
        ("Dockerfile.", "Containerfile.")
    ):
        return Kind.DOCKERFILE
    suffix = p.suffix.lower()
    if suffix in _BY_SUFFIX:
        return _BY_SUFFIX[suffix]
    if not suffix and head.startswith(b"#!"):
        words = head[2:].split(b"\n", 1)[0].decode("utf-8", "replace").split()
        program = os.path.basename(words[0]) if words else ""
        if program == "env" and len(words) > 1:
            program = words[-1]
        if program in _SHELLS:
            return Kind.SHELL
        if program.startswith("python"):
            return Kind.PYTHON
    return Kind.OTHER


def is_python_test(path: str) -> bool:
    name = PurePosixPath(path).name
    return name.endswith(".py") and (
        name.startswith("test_") or name.endswith("_test.py") or name == "conftest.py"
    )


def is_js_test(path: str) -> bool:
    """node --test's default patterns (Node 20)."""
    p = PurePosixPath(path)
    if p.suffix not in (".js", ".mjs", ".cjs"):
        return False
    stem = p.name[: -len(p.suffix)]
    if stem == "test" or stem.startswith("test-"):
        return True
    if stem.endswith((".test", "-test", "_test")):
        return True
    return any(part in _JS_TEST_DIRS for part in p.parts[:-1])


@dataclass(frozen=True)
class Inventory:
    """The project's files by kind (relative POSIX paths, sorted), and the subset in scope."""

    by_kind: dict[Kind, tuple[str, ...]]
    scope: frozenset[str] | None = None  # None: every file
    dropped: int = 0  # files beyond max_files, not considered
    all_files: tuple[str, ...] = field(default=())

    def files(self, kind: Kind, *, scoped: bool = True) -> tuple[str, ...]:
        found = self.by_kind.get(kind, ())
        if scoped and self.scope is not None:
            return tuple(f for f in found if f in self.scope)
        return found

    def python_tests(self) -> tuple[str, ...]:
        return tuple(f for f in self.files(Kind.PYTHON, scoped=False) if is_python_test(f))

    def js_tests(self) -> tuple[str, ...]:
        return tuple(f for f in self.files(Kind.JAVASCRIPT, scoped=False) if is_js_test(f))

    def in_scope(self, path: str) -> bool:
        return self.scope is None or path in self.scope


def _walk(root: Path) -> Iterable[tuple[str, os.stat_result]]:
    """The regular files under `root` (lstat-ed, never opened), folders in SKIP_DIRS left out.

    Symlinks, FIFOs, sockets and devices are skipped, not refused: validation checks files of
    a kind, and such a thing is of none; handed to a check, a FIFO would only make it wait
    until its timeout. Refusing them is the capsule's job (capsule/builder.py scan_project),
    which names each one, so a tree holding one is never packaged (docs/VALIDATION.md)."""
    stack = [root]
    while stack:
        current = stack.pop()
        try:
            entries = sorted(os.scandir(current), key=lambda e: e.name)
        except OSError:
            continue
        for entry in entries:
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if stat.S_ISDIR(st.st_mode):
                if entry.name not in SKIP_DIRS:
                    stack.append(Path(entry.path))
            elif stat.S_ISREG(st.st_mode):
                rel = Path(entry.path).relative_to(root).as_posix()
                yield rel, st


def _head(path: Path) -> bytes:
    """The first bytes of a file without an extension (for its #! line). A file swapped for a
    FIFO, a link or anything else since the walk has no head: it is never waited on."""
    try:
        return read_regular(path, 128)
    except (NotRegularFileError, OSError):
        return b""


def classify(
    workspace: Path, *, only_files: Collection[str] | None = None, max_files: int = 5000
) -> Inventory:
    found = sorted(_walk(workspace))
    dropped = max(0, len(found) - max_files)
    by_kind: dict[Kind, list[str]] = {}
    for rel, st in found[:max_files]:
        head = _head(workspace / rel) if "." not in PurePosixPath(rel).name and st.st_size else b""
        by_kind.setdefault(kind_of(rel, head), []).append(rel)
    scope = None
    if only_files is not None:
        scope = frozenset(PurePosixPath(f).as_posix().removeprefix("./") for f in only_files)
    return Inventory(
        by_kind={k: tuple(v) for k, v in by_kind.items()},
        scope=scope,
        dropped=dropped,
        all_files=tuple(rel for rel, _ in found[:max_files]),
    )
