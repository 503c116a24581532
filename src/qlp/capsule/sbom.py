"""A CycloneDX 1.6 SBOM of the dependencies the generated project declares.

Written here rather than with cyclonedx-python-lib: the document is small, and the bytes
must be a pure function of the project (no serial number, no timestamp, sorted lists).
Both of those fields are optional in CycloneDX. Declarations read: requirements*.txt,
pyproject.toml ([project] dependencies and optional-dependencies) and package.json
(dependencies, devDependencies). A line that cannot be parsed is recorded as a
"qlp:unparsed" property of the BOM's metadata, never a reason to fail packaging.
"""

from __future__ import annotations

import fnmatch
import json
import re
import tomllib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from qlp.capsule.base import CapsuleInputError
from qlp.errors import NotRegularFileError
from qlp.safefiles import read_regular

SPEC_VERSION = "1.6"
_MAX_DECLARATION_BYTES = 2 * 1024 * 1024
_SKIP_DIRS = frozenset({"node_modules", ".venv", "venv", "site-packages", ".git", "__pycache__"})
_NPM_EXACT = re.compile(r"^v?(\d+\.\d+\.\d+(?:[-+][0-9A-Za-z.+-]+)?)$")


@dataclass
class _Component:
    ecosystem: str  # pypi | npm
    name: str
    specifier: str  # "" when any version goes
    scope: str  # required | optional
    declared_in: set[str] = field(default_factory=set)
    extras: set[str] = field(default_factory=set)

    @property
    def exact_version(self) -> str | None:
        if self.ecosystem == "pypi":
            match = re.fullmatch(r"===?([^,;*\s]+)", self.specifier)
            return match.group(1) if match else None
        match = _NPM_EXACT.match(self.specifier)
        return match.group(1) if match else None

    @property
    def purl(self) -> str:
        name = quote(self.name, safe="/") if self.ecosystem == "npm" else self.name
        version = self.exact_version
        return f"pkg:{self.ecosystem}/{name}" + (f"@{quote(version, safe='')}" if version else "")

    @property
    def ref(self) -> str:
        return f"{self.ecosystem}:{self.name}:{self.specifier or '*'}:{self.scope}"

    def as_dict(self) -> dict[str, Any]:
        props = [{"name": "qlp:declared-in", "value": p} for p in sorted(self.declared_in)]
        if self.specifier:
            props.append({"name": "qlp:specifier", "value": self.specifier})
        props += [{"name": "qlp:extra", "value": e} for e in sorted(self.extras)]
        out: dict[str, Any] = {
            "type": "library",
            "bom-ref": self.ref,
            "name": self.name,
            "purl": self.purl,
            "scope": self.scope,
            "properties": props,
        }
        version = self.exact_version
        if version:
            out["version"] = version
        return out


class _Collector:
    def __init__(self) -> None:
        self.components: dict[str, _Component] = {}
        self.unparsed: list[str] = []

    def add(
        self, ecosystem: str, name: str, spec: str, scope: str, where: str, extra: str = ""
    ) -> None:
        comp = _Component(ecosystem, name, spec, scope)
        comp = self.components.setdefault(comp.ref, comp)
        comp.declared_in.add(where)
        if extra:
            comp.extras.add(extra)

    def add_pep508(
        self, line: str, scope: str, where: str, extra: str = "", label: str = ""
    ) -> None:
        try:
            req = Requirement(line)
        except InvalidRequirement:
            self.unparsed.append(f"{label or where}: {line[:200]}")
            return
        spec = str(req.specifier)
        if req.url:
            spec = f"@ {req.url}"
        if req.marker is not None:
            spec = f"{spec}; {req.marker}" if spec else f"; {req.marker}"
        self.add("pypi", canonicalize_name(req.name), spec, scope, where, extra)


def _is_declaration(rel: str) -> bool:
    parts = rel.split("/")
    if any(p in _SKIP_DIRS for p in parts[:-1]):
        return False
    name = parts[-1]
    return name in ("pyproject.toml", "package.json") or fnmatch.fnmatch(name, "requirements*.txt")


def _requirements_lines(text: str) -> Iterable[tuple[int, str]]:
    pending = ""
    for number, raw in enumerate(text.splitlines(), start=1):
        line = pending + raw
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        pending = ""
        line = re.sub(r"(^|\s)#.*$", "", line).strip()
        if line:
            yield number, line


def _read_requirements(col: _Collector, rel: str, text: str) -> None:
    for number, line in _requirements_lines(text):
        if line.startswith("-"):  # -r, -c, -e, --index-url, --hash...: not a dependency line
            continue
        line = re.split(r"\s--hash[=\s]", line)[0].strip()
        if "://" in line and " @ " not in line:  # a bare URL has no name to record
            col.unparsed.append(f"{rel}:{number}: {line[:200]}")
            continue
        col.add_pep508(line, "required", rel, label=f"{rel}:{number}")


def _read_pyproject(col: _Collector, rel: str, text: str) -> None:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        col.unparsed.append(f"{rel}: {exc}")
        return
    project = data.get("project")
    if not isinstance(project, dict):
        return
    deps = project.get("dependencies", [])
    for dep in deps if isinstance(deps, list) else []:
        if isinstance(dep, str):
            col.add_pep508(dep, "required", rel)
    optional = project.get("optional-dependencies", {})
    for extra, group in optional.items() if isinstance(optional, dict) else []:
        for dep in group if isinstance(group, list) else []:
            if isinstance(dep, str):
                col.add_pep508(dep, "optional", rel, extra=str(extra))


def _read_package_json(col: _Collector, rel: str, text: str) -> None:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        col.unparsed.append(f"{rel}: {exc}")
        return
    if not isinstance(data, dict):
        return
    groups = (("dependencies", "required", ""), ("devDependencies", "optional", "dev"))
    for key, scope, extra in groups:
        deps = data.get(key)
        for name, spec in deps.items() if isinstance(deps, dict) else []:
            if isinstance(name, str) and name and isinstance(spec, str):
                col.add("npm", name, spec.strip(), scope, rel, extra=extra)


def build_sbom(
    project_files: Sequence[tuple[str, Path]],
    *,
    name: str,
    version: str,
    tool_version: str,
) -> dict[str, Any]:
    """CycloneDX JSON for the dependencies declared by `project_files` ((relpath, file))."""
    col = _Collector()
    for rel, path in project_files:
        if not _is_declaration(rel):
            continue
        try:
            # Not waiting on a FIFO (or following a link) swapped in after the project scan.
            raw = read_regular(path, _MAX_DECLARATION_BYTES + 1, shown=rel)
        except NotRegularFileError as exc:
            raise CapsuleInputError(f"{exc.message}: it changed after the scan") from None
        except OSError as exc:
            raise CapsuleInputError(f"{rel}: cannot be read ({exc.strerror})") from None
        if len(raw) > _MAX_DECLARATION_BYTES:
            col.unparsed.append(f"{rel}: larger than {_MAX_DECLARATION_BYTES} bytes, not read")
            continue
        text = raw.decode("utf-8", "replace")
        base = rel.rsplit("/", 1)[-1]
        if base == "pyproject.toml":
            _read_pyproject(col, rel, text)
        elif base == "package.json":
            _read_package_json(col, rel, text)
        else:
            _read_requirements(col, rel, text)

    components = [c.as_dict() for _, c in sorted(col.components.items())]
    root_ref = "project"
    metadata: dict[str, Any] = {
        "component": {"type": "application", "bom-ref": root_ref, "name": name, "version": version},
        "tools": {"components": [{"type": "application", "name": "qlp", "version": tool_version}]},
    }
    if col.unparsed:
        metadata["properties"] = [
            {"name": "qlp:unparsed", "value": u} for u in sorted(col.unparsed)
        ]
    return {
        "bomFormat": "CycloneDX",
        "specVersion": SPEC_VERSION,
        "version": 1,
        "metadata": metadata,
        "components": components,
        "dependencies": [
            {"ref": root_ref, "dependsOn": [c["bom-ref"] for c in components]},
        ]
        + [{"ref": c["bom-ref"]} for c in components],
    }
