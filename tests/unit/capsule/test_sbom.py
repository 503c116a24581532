"""The CycloneDX SBOM built from what the generated project declares."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

from qlp.capsule.base import BuiltCapsule
from qlp.capsule.sbom import build_sbom


def _sbom(built: BuiltCapsule) -> dict[str, Any]:
    with zipfile.ZipFile(built.path) as zf:
        data: dict[str, Any] = json.loads(zf.read("sbom.cdx.json"))
    return data


def test_shape_is_cyclonedx_1_6(built: BuiltCapsule) -> None:
    bom = _sbom(built)
    assert bom["bomFormat"] == "CycloneDX"
    assert bom["specVersion"] == "1.6"
    assert bom["version"] == 1
    assert "serialNumber" not in bom and "timestamp" not in bom["metadata"]
    assert bom["metadata"]["component"]["type"] == "application"
    assert bom["metadata"]["tools"]["components"][0]["name"] == "qlp"
    refs = [c["bom-ref"] for c in bom["components"]]
    assert len(refs) == len(set(refs)) and refs == sorted(refs)
    for comp in bom["components"]:
        assert comp["type"] == "library"
        assert comp["scope"] in ("required", "optional")
        assert comp["purl"].startswith(("pkg:pypi/", "pkg:npm/"))
        assert all(set(p) == {"name", "value"} for p in comp["properties"])
    root = bom["dependencies"][0]
    assert root["ref"] == bom["metadata"]["component"]["bom-ref"]
    assert sorted(root["dependsOn"]) == sorted(refs)


def test_dependencies_found(built: BuiltCapsule) -> None:
    comps = {(c["purl"], c["scope"]): c for c in _sbom(built)["components"]}
    assert ("pkg:pypi/fastapi@0.110.0", "required") in comps
    assert comps[("pkg:pypi/fastapi@0.110.0", "required")]["version"] == "0.110.0"
    uvicorn = comps[("pkg:pypi/uvicorn", "required")]
    assert {"name": "qlp:specifier", "value": ">=0.29"} in uvicorn["properties"]
    assert "version" not in uvicorn
    assert ("pkg:pypi/pydantic", "required") in comps  # pyproject dependencies
    pytest_dep = comps[("pkg:pypi/pytest@8.2.0", "optional")]  # optional-dependencies
    assert {"name": "qlp:extra", "value": "test"} in pytest_dep["properties"]
    assert ("pkg:npm/react@18.2.0", "required") in comps
    assert ("pkg:npm/%40types/node", "required") in comps
    assert ("pkg:npm/vite@5.0.0", "optional") in comps
    declared = comps[("pkg:npm/react@18.2.0", "required")]["properties"][0]
    assert declared == {"name": "qlp:declared-in", "value": "web/package.json"}


def test_unparsable_lines_are_recorded_not_fatal(tmp_path: Path) -> None:
    (tmp_path / "requirements-dev.txt").write_text(
        "# tools\n--index-url https://example.invalid/simple\n"
        "requests >= 2.0 ; python_version >= '3.8' \\\n    --hash=sha256:abc\n"
        "https://example.invalid/pkg.whl\n!!!\n"
    )
    (tmp_path / "package.json").write_text("{broken")
    (tmp_path / "node_modules").mkdir()
    (tmp_path / "node_modules" / "package.json").write_text('{"dependencies": {"x": "1.0.0"}}')
    files = [
        ("requirements-dev.txt", tmp_path / "requirements-dev.txt"),
        ("package.json", tmp_path / "package.json"),
        ("node_modules/package.json", tmp_path / "node_modules" / "package.json"),
    ]
    bom = build_sbom(files, name="n", version="1", tool_version="0")
    names = [c["name"] for c in bom["components"]]
    assert names == ["requests"]
    spec = dict((p["name"], p["value"]) for p in bom["components"][0]["properties"])
    assert spec["qlp:specifier"] == '>=2.0; python_version >= "3.8"'
    unparsed = [p["value"] for p in bom["metadata"]["properties"]]
    assert any(u.startswith("requirements-dev.txt:5: https://") for u in unparsed)
    assert any(u.startswith("requirements-dev.txt:6: !!!") for u in unparsed)
    assert any(u.startswith("package.json: ") for u in unparsed)


def test_no_declarations_gives_empty_component_list(tmp_path: Path) -> None:
    bom = build_sbom([], name="n", version="1", tool_version="0")
    assert bom["components"] == []
    assert bom["dependencies"] == [{"ref": "project", "dependsOn": []}]
