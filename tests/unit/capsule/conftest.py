"""Fixtures for capsule tests: a small generated project, its inputs, a signing key."""

from __future__ import annotations

import zipfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from qlp.capsule.base import (
    BuiltCapsule,
    CapsuleInputs,
    GateResult,
    ModelUse,
    ReviewDecision,
    Totals,
)
from qlp.capsule.builder import build_capsule

INTENT_ID = "QLI-01J0000000000000000000000A"

PROJECT_FILES: dict[str, bytes] = {
    "app/main.py": (
        b"from fastapi import FastAPI\n\napp = FastAPI()\n\n\n"
        b'@app.get("/")\ndef root():\n    return {"ok": True}\n'
    ),
    "app/__init__.py": b"",
    "tests/test_main.py": b"def test_ok():\n    assert True\n",
    "requirements.txt": b"fastapi==0.110.0\nuvicorn[standard]>=0.29  # server\n-r dev.txt\n",
    "pyproject.toml": (
        b'[project]\nname = "users"\nversion = "0.1.0"\ndependencies = ["pydantic>=2"]\n\n'
        b'[project.optional-dependencies]\ntest = ["pytest==8.2.0"]\n'
    ),
    "web/package.json": (
        b'{"name": "web", "dependencies": {"react": "18.2.0", "@types/node": "^20"},'
        b' "devDependencies": {"vite": "5.0.0"}}\n'
    ),
    "assets/logo.bin": bytes(range(256)) * 4,
    "docs/\u00fcber.md": "# \u00dcber\n".encode(),
}

SARIF: dict[str, Any] = {
    "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
    "version": "2.1.0",
    "runs": [
        {
            "tool": {"driver": {"name": "bandit", "version": "1.7.9"}},
            "results": [
                {
                    "ruleId": "B101",
                    "level": "note",
                    "message": {"text": "assert used"},
                    "locations": [
                        {
                            "physicalLocation": {
                                "artifactLocation": {"uri": "tests/test_main.py"},
                                "region": {"startLine": 2},
                            }
                        }
                    ],
                }
            ],
        }
    ],
}

JUNIT = (
    '<?xml version="1.0" encoding="utf-8"?>\n'
    '<testsuites><testsuite name="pytest" tests="1" failures="0" errors="0">'
    '<testcase classname="tests.test_main" name="test_ok" time="0.001"/>'
    "</testsuite></testsuites>\n"
)


def write_project(root: Path, files: dict[str, bytes] | None = None, reverse: bool = False) -> Path:
    items = list((files or PROJECT_FILES).items())
    if reverse:
        items.reverse()
    for rel, data in items:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


def make_inputs(project: Path, **changes: Any) -> CapsuleInputs:
    fields: dict[str, Any] = {
        "intent_id": INTENT_ID,
        "intent_text": "Create a REST API for user management with JWT auth",
        "project_dir": project,
        "version": 1,
        "plan": {
            "tasks": [
                {"id": "QL-DEV-001", "type": "codegen", "title": "API", "dependencies": []},
                {
                    "id": "QL-TST-002",
                    "type": "test",
                    "title": "Tests",
                    "dependencies": ["QL-DEV-001"],
                },
            ]
        },
        "models": [
            ModelUse("openai", "gpt-4o"),
            ModelUse("anthropic", "claude-sonnet-4-5"),
            ModelUse("openai", "gpt-4o"),
        ],
        "totals": Totals(input_tokens=1200, output_tokens=3400, cost_usd=0.0421, unpriced_calls=0),
        "scores": {"overall": 87, "security": 100, "coverage": None},
        "gates": [
            GateResult("syntax", True, "clean"),
            GateResult("tests", True, "all tests pass"),
            GateResult("security", True, "no high or critical finding"),
        ],
        "decision": ReviewDecision("approve", "alice", "2025-03-01T10:00:00Z", "looks good"),
        "tasks": [
            {"id": "QL-DEV-001", "status": "succeeded", "files": ["app/main.py"]},
            {"id": "QL-TST-002", "status": "succeeded", "files": ["tests/test_main.py"]},
        ],
        "validation": {"overall": 87, "checks": [{"name": "pytest", "passed": True}]},
        "sarif": SARIF,
        "junit_xml": JUNIT,
        "transcript": [
            {
                "call": 1,
                "request": {"messages": [{"role": "user", "content": "plan it"}]},
                "usage": {"input": 10},
            },
            {"call": 2, "response": "files\nhere \u2028 and there", "usage": {"output": 20}},
        ],
    }
    fields.update(changes)
    return CapsuleInputs(**fields)


@pytest.fixture(scope="session")
def signing_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(bytes(range(32)))


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return write_project(tmp_path / "project")


@pytest.fixture
def built(tmp_path: Path, project: Path, signing_key: Ed25519PrivateKey) -> BuiltCapsule:
    return build_capsule(make_inputs(project), tmp_path / "out" / "c.qlcapsule", signing_key)


Transform = Callable[[zipfile.ZipInfo, bytes], Iterable[tuple[zipfile.ZipInfo, bytes]]]


def rewrite(
    src: Path,
    dst: Path,
    transform: Transform,
    extra: Iterable[tuple[zipfile.ZipInfo | str, bytes]] = (),
) -> Path:
    """Copy the zip `src` to `dst` entry by entry through `transform`, then add `extra`."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED) as zout:
        for info in zin.infolist():
            for new_info, data in transform(info, zin.read(info)):
                zout.writestr(new_info, data)
        for name, data in extra:
            zout.writestr(name, data)
    return dst


def keep(info: zipfile.ZipInfo, data: bytes) -> Iterable[tuple[zipfile.ZipInfo, bytes]]:
    yield info, data


def flip_byte(data: bytes, index: int = 0) -> bytes:
    return data[:index] + bytes([data[index] ^ 0x01]) + data[index + 1 :]
