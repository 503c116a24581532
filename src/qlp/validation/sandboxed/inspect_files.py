"""Parse checks and the docs check (run inside the sandbox, cwd /workspace).

Standard input: JSON {"python": [...], "json": [...], "yaml": [...], "toml": [...],
"terraform": [...], "markdown": [...], "required_docs": [...], "count_lines": [...]}: paths
relative to the project. Prints JSON {"results": {kind: {path: null | {"line", "column",
"message"}}}, "unavailable": {kind: reason}, "docs": {"required": {path: state}, "links":
[...]}, "lines": {path: non-blank lines}}.

Python files are compiled, never run; data files are parsed with safe loaders only.
"""

from __future__ import annotations

import errno
import importlib
import json
import os
import re
import stat
import sys
import tomllib
import urllib.parse
from collections.abc import Callable
from typing import Any

Problem = dict[str, Any] | None

_TOML_AT = re.compile(r"\(at line (\d+), column (\d+)\)")
_FENCE = re.compile(r"^\s*(```|~~~)")
_INLINE_CODE = re.compile(r"`[^`]*`")
_INLINE_LINK = re.compile(r"!?\[[^\]]*\]\(\s*(<[^>]*>|[^)\s]+)(?:\s+[\"'(][^)]*)?\)")
_REF_DEF = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*(<[^>]*>|\S+)")
_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")
ROOT = os.getcwd()


def _read(path: str) -> bytes:
    """The bytes of `path` if it is a regular file; OSError naming what it is if not. The
    project's tests run in this sandbox at the same time and could swap a file for a FIFO,
    whose plain open() waits for a writer until the sandbox's timeout. (The rule of
    qlp/safefiles.py, restated: this script runs alone in the sandbox and cannot import QLP.)"""
    # Links are followed, as before: in here they lead only to what the sandbox can see, and
    # what they lead to must still be a regular file.
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            what = "a FIFO" if stat.S_ISFIFO(mode) else "a folder" if stat.S_ISDIR(mode) else None
            raise OSError(errno.EINVAL, f"{what or 'a special file'}, not a regular file", path)
        os.set_blocking(fd, True)
        with os.fdopen(fd, "rb", closefd=False) as fh:
            return fh.read()
    finally:
        os.close(fd)


def _problem(line: int | None, column: int | None, message: str) -> dict[str, Any]:
    return {"line": line, "column": column, "message": message.strip()[:500]}


def check_python(path: str) -> Problem:
    try:
        compile(_read(path), path, "exec", dont_inherit=True)
    except SyntaxError as exc:
        return _problem(exc.lineno, exc.offset, f"{type(exc).__name__}: {exc.msg}")
    except (ValueError, RecursionError, MemoryError) as exc:
        return _problem(None, None, f"{type(exc).__name__}: {exc}")
    return None


def check_json(path: str) -> Problem:
    try:
        json.loads(_read(path))
    except json.JSONDecodeError as exc:
        return _problem(exc.lineno, exc.colno, exc.msg)
    except (ValueError, RecursionError) as exc:
        return _problem(None, None, f"{type(exc).__name__}: {exc}")
    return None


def check_toml(path: str) -> Problem:
    try:
        tomllib.loads(_read(path).decode("utf-8"))
    except tomllib.TOMLDecodeError as exc:
        at = _TOML_AT.search(str(exc))
        msg = _TOML_AT.sub("", str(exc))
        return _problem(int(at[1]) if at else None, int(at[2]) if at else None, msg)
    except (ValueError, RecursionError) as exc:
        return _problem(None, None, f"{type(exc).__name__}: {exc}")
    return None


def yaml_checker() -> Callable[[str], Problem]:
    yaml: Any = importlib.import_module("yaml")

    def check(path: str) -> Problem:
        try:
            # safe_load_all: every document of a multi-document file, no object construction
            for _ in yaml.safe_load_all(_read(path)):
                pass
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            line = mark.line + 1 if mark is not None else None
            col = mark.column + 1 if mark is not None else None
            return _problem(line, col, " ".join(filter(None, [exc.context, exc.problem])))
        except (yaml.YAMLError, ValueError, RecursionError) as exc:
            return _problem(None, None, f"{type(exc).__name__}: {exc}")
        return None

    return check


def hcl_checker() -> Callable[[str], Problem]:
    hcl2: Any = importlib.import_module("hcl2")

    def check(path: str) -> Problem:
        try:
            hcl2.loads(_read(path).decode("utf-8"))
        except Exception as exc:  # lark raises many kinds; all mean "does not parse"
            line = getattr(exc, "line", None)
            col = getattr(exc, "column", None)
            first = str(exc).strip().splitlines()
            text = first[0] if first else type(exc).__name__
            return _problem(
                line if isinstance(line, int) and line > 0 else None,
                col if isinstance(col, int) and col > 0 else None,
                f"{type(exc).__name__}: {text}",
            )
        return None

    return check


def _links(text: str) -> list[tuple[int, str]]:
    found: list[tuple[int, str]] = []
    fenced = False
    for number, line in enumerate(text.splitlines(), start=1):
        if _FENCE.match(line):
            fenced = not fenced
            continue
        if fenced:
            continue
        plain = _INLINE_CODE.sub("", line)
        found += [(number, m.group(1)) for m in _INLINE_LINK.finditer(plain)]
        ref = _REF_DEF.match(plain)
        if ref:
            found.append((number, ref.group(1)))
    return found


def _local_target(doc: str, raw: str) -> str | None:
    """The project path a relative link points to, or None when it is not a local link."""
    target = raw[1:-1] if raw.startswith("<") and raw.endswith(">") else raw
    if not target or target.startswith("#") or target.startswith("//"):
        return None
    if _SCHEME.match(target):
        return None
    target = urllib.parse.unquote(target.split("#", 1)[0].split("?", 1)[0])
    if not target:
        return None
    base = ROOT if target.startswith("/") else os.path.dirname(os.path.join(ROOT, doc))
    return os.path.normpath(os.path.join(base, target.lstrip("/")))


def check_docs(markdown: list[str], required: list[str]) -> dict[str, Any]:
    states: dict[str, str] = {}
    for path in required:
        try:
            data = _read(path) if os.path.isfile(path) else None
        except OSError:  # swapped for something else since: not a document
            data = None
        states[path] = "missing" if data is None else "ok" if data.strip() else "empty"
    links: list[dict[str, Any]] = []
    for doc in markdown:
        try:
            text = _read(doc).decode("utf-8", errors="replace")
        except OSError:
            continue
        for line, raw in _links(text):
            resolved = _local_target(doc, raw)
            if resolved is None:
                continue
            inside = resolved == ROOT or resolved.startswith(ROOT + os.sep)
            ok = inside and os.path.exists(resolved)
            links.append({"path": doc, "line": line, "target": raw, "ok": ok, "inside": inside})
    return {"required": states, "links": links}


def main() -> None:
    spec = json.loads(sys.stdin.read())
    checkers: dict[str, Callable[[str], Problem]] = {
        "python": check_python,
        "json": check_json,
        "toml": check_toml,
    }
    unavailable: dict[str, str] = {}
    for kind, make, module in (
        ("yaml", yaml_checker, "pyyaml"),
        ("terraform", hcl_checker, "python-hcl2"),
    ):
        try:
            checkers[kind] = make()
        except ImportError:
            unavailable[kind] = (
                f"the Python package {module} is not installed in the sandbox runtime"
            )
    results: dict[str, dict[str, Problem]] = {}
    for kind, check in checkers.items():
        outcome: dict[str, Problem] = {}
        for path in spec.get(kind, []):
            try:
                outcome[path] = check(path)
            except OSError as exc:
                outcome[path] = _problem(None, None, f"cannot read the file: {exc.strerror}")
        results[kind] = outcome
    docs = check_docs(spec.get("markdown", []), spec.get("required_docs", []))
    lines: dict[str, int] = {}
    for path in spec.get("count_lines", []):
        try:
            lines[path] = sum(1 for line in _read(path).splitlines() if line.strip())
        except OSError:
            continue
    report = {"results": results, "unavailable": unavailable, "docs": docs, "lines": lines}
    print(json.dumps(report))


if __name__ == "__main__":
    main()
