"""The published manifest schema: every built capsule validates against it."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from qlp.capsule.base import BuiltCapsule
from qlp.capsule.format import manifest_schema

ROOT = Path(__file__).resolve().parents[3]
PUBLISHED = ROOT / "docs" / "capsule-manifest.schema.json"
PACKAGED = ROOT / "src" / "qlp" / "capsule" / "manifest.schema.json"


def _validator() -> jsonschema.Draft202012Validator:
    schema = json.loads(PUBLISHED.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def test_published_schema_is_the_one_verify_uses() -> None:
    assert PUBLISHED.read_bytes() == PACKAGED.read_bytes()
    assert manifest_schema() == json.loads(PUBLISHED.read_text())
    assert manifest_schema()["$schema"] == "https://json-schema.org/draft/2020-12/schema"


def test_built_manifest_validates(built: BuiltCapsule) -> None:
    _validator().validate(built.manifest)


def _set(m: dict[str, Any], path: str, value: Any) -> None:
    *parents, last = path.split(".")
    target: Any = m
    for part in parents:
        target = target[int(part)] if part.isdigit() else target[part]
    if last.isdigit():
        target[int(last)] = value
    else:
        target[last] = value


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("capsule_id", "QL-CAP-XYZ"),
        ("schema_version", 2),
        ("version", 0),
        ("entries.0.path", "../evil"),
        ("entries.0.path", "/etc/passwd"),
        ("entries.0.path", "project/a\\b"),
        ("entries.0.path", "project/./a"),
        ("entries.0.path", "elsewhere/file"),
        ("entries.0.sha256", "abc"),
        ("entries.0.size", -1),
        ("scores.overall", "high"),
        ("totals.cost_usd", -0.5),
        ("signing.public_key", "ed25519:short"),
        ("decision.at", 5),
        ("gates.0.passed", "yes"),
        ("unexpected", 1),
    ],
)
def test_schema_rejects_broken_manifests(built: BuiltCapsule, path: str, value: Any) -> None:
    broken = copy.deepcopy(built.manifest)
    _set(broken, path, value)
    errors = list(_validator().iter_errors(broken))
    assert errors, f"{path}={value!r} should not validate"


def test_entry_paths_that_are_allowed(built: BuiltCapsule) -> None:
    for path in (
        "project/a/b.py",
        "project/.github/workflows/ci.yml",
        "project/..hidden",
        "tasks/QL-DEV-001.json",
    ):
        m = copy.deepcopy(built.manifest)
        m["entries"][0]["path"] = path
        assert not list(_validator().iter_errors(m)), path
