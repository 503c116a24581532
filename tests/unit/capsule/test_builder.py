"""Building capsules: layout, determinism, streaming inputs, refusals."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import zipfile
from collections.abc import Sequence
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from qlp.capsule import builder
from qlp.capsule.base import BuiltCapsule, CapsuleInputError
from qlp.capsule.builder import build_capsule, scan_project
from qlp.capsule.format import derive_capsule_id, stable_json
from qlp.capsule.sbom import build_sbom
from qlp.capsule.verify import verify_capsule
from tests.fifo_guard import fifo_guard

from .conftest import PROJECT_FILES, make_inputs, write_project


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_layout_and_entries(built: BuiltCapsule) -> None:
    with zipfile.ZipFile(built.path) as zf:
        names = zf.namelist()
        manifest_bytes = zf.read("manifest.json")
    assert names[:2] == ["manifest.json", "manifest.sig"]
    assert names[2:] == sorted(names[2:])
    expected_project = sorted("project/" + rel for rel in PROJECT_FILES)
    assert [n for n in names if n.startswith("project/")] == expected_project
    for name in (
        "README.md",
        "sbom.cdx.json",
        "transcript.jsonl",
        "reports/validation.json",
        "reports/security.sarif",
        "reports/tests.xml",
        "tasks/QL-DEV-001.json",
        "tasks/QL-TST-002.json",
    ):
        assert name in names
    manifest = json.loads(manifest_bytes)
    assert manifest_bytes == stable_json(manifest)
    assert manifest == built.manifest
    listed = [e["path"] for e in manifest["entries"]]
    assert listed == sorted(set(names) - {"manifest.json", "manifest.sig"})
    assert manifest["capsule_id"] == built.capsule_id == derive_capsule_id(manifest)
    assert built.sha256 == _sha(built.path)
    assert built.size == built.path.stat().st_size


def test_zip_metadata_is_fixed(built: BuiltCapsule) -> None:
    with zipfile.ZipFile(built.path) as zf:
        for info in zf.infolist():
            assert info.date_time == (1980, 1, 1, 0, 0, 0)
            assert info.external_attr >> 16 == 0o100644
            assert info.compress_type == zipfile.ZIP_DEFLATED
            assert info.extra == b""
            assert info.create_system == 3
        assert zf.comment == b""


def test_manifest_content(built: BuiltCapsule) -> None:
    m = built.manifest
    assert m["intent"]["text"].startswith("Create a REST API")
    assert m["models"] == [
        {"provider": "anthropic", "model": "claude-sonnet-4-5"},
        {"provider": "openai", "model": "gpt-4o"},
    ]
    assert m["totals"] == {
        "input_tokens": 1200,
        "output_tokens": 3400,
        "cost_usd": 0.0421,
        "unpriced_calls": 0,
    }
    assert m["scores"]["coverage"] is None
    assert m["decision"]["by"] == "alice"
    assert m["signing"]["public_key"].startswith("ed25519:")
    sizes = {e["path"]: e["size"] for e in m["entries"]}
    assert sizes["project/assets/logo.bin"] == 1024


def test_readme_shows_scores_gates_decision(built: BuiltCapsule) -> None:
    with zipfile.ZipFile(built.path) as zf:
        readme = zf.read("README.md").decode()
    assert built.capsule_id in readme
    assert "| coverage | n/a |" in readme
    assert "| overall | 87 |" in readme
    assert "| tests | passed | all tests pass |" in readme
    assert "**approve** by alice" in readme
    assert "pip install -r requirements.txt" in readme
    assert "$0.0421" in readme


def test_transcript_is_one_stable_json_object_a_line(built: BuiltCapsule) -> None:
    with zipfile.ZipFile(built.path) as zf:
        data = zf.read("transcript.jsonl")
    lines = data.split(b"\n")
    assert lines[-1] == b""
    records = [json.loads(line) for line in lines[:-1]]
    assert records[1]["response"] == "files\nhere \u2028 and there"
    assert all(stable_json(r) == line + b"\n" for r, line in zip(records, lines, strict=False))
    assert "\u2028".encode() not in data  # escaped: no reader may split a record


def test_two_builds_have_equal_bytes(tmp_path: Path, signing_key: Ed25519PrivateKey) -> None:
    one = write_project(tmp_path / "one")
    two = write_project(tmp_path / "two", reverse=True)  # created in another order
    # different mtimes and permissions on disk
    for path in two.rglob("*"):
        if path.is_file():
            os.utime(path, (1_000_000_000, 1_000_000_000))
            path.chmod(0o755)
    (two / "app").chmod(0o700)
    a = build_capsule(make_inputs(one), tmp_path / "a.qlcapsule", signing_key)
    b = build_capsule(make_inputs(two), tmp_path / "b.qlcapsule", signing_key)
    assert a.sha256 == b.sha256 == _sha(tmp_path / "b.qlcapsule")
    assert a.capsule_id == b.capsule_id
    assert (tmp_path / "a.qlcapsule").read_bytes() == (tmp_path / "b.qlcapsule").read_bytes()


def test_different_inputs_give_different_ids(
    tmp_path: Path, project: Path, signing_key: Ed25519PrivateKey
) -> None:
    a = build_capsule(make_inputs(project), tmp_path / "a.qlcapsule", signing_key)
    b = build_capsule(
        make_inputs(project, version=2, parent=a.capsule_id), tmp_path / "b.qlcapsule", signing_key
    )
    (project / "app" / "main.py").write_text("changed\n")
    c = build_capsule(make_inputs(project), tmp_path / "c.qlcapsule", signing_key)
    assert len({a.capsule_id, b.capsule_id, c.capsule_id}) == 3
    assert b.manifest["parent"] == a.capsule_id


def test_transcript_generator_is_streamed(
    tmp_path: Path, project: Path, signing_key: Ed25519PrivateKey
) -> None:
    def records():  # type: ignore[no-untyped-def]
        for i in range(2000):
            yield {"call": i, "text": "x" * 100}

    built = build_capsule(
        make_inputs(project, transcript=records()), tmp_path / "t.qlcapsule", signing_key
    )
    with zipfile.ZipFile(built.path) as zf:
        assert len(zf.read("transcript.jsonl").splitlines()) == 2000
    assert verify_capsule(built.path).ok


def test_missing_reports_become_empty_documents(
    tmp_path: Path, project: Path, signing_key: Ed25519PrivateKey
) -> None:
    inputs = make_inputs(
        project, validation=None, sarif=None, junit_xml=None, decision=None, gates={}
    )
    built = build_capsule(inputs, tmp_path / "e.qlcapsule", signing_key)
    with zipfile.ZipFile(built.path) as zf:
        assert json.loads(zf.read("reports/security.sarif"))["version"] == "2.1.0"
        assert b"<testsuites" in zf.read("reports/tests.xml")
        assert "No review decision was recorded." in zf.read("README.md").decode()
    assert verify_capsule(built.path).ok


def test_refuses_symlinks(tmp_path: Path, project: Path, signing_key: Ed25519PrivateKey) -> None:
    (project / "link.py").symlink_to(project / "app" / "main.py")
    (project / "linked_dir").symlink_to(project / "app")
    with pytest.raises(CapsuleInputError) as err:
        build_capsule(make_inputs(project), tmp_path / "s.qlcapsule", signing_key)
    assert "link.py (symbolic link)" in str(err.value)
    assert "linked_dir (symbolic link)" in str(err.value)
    assert not (tmp_path / "s.qlcapsule").exists()


def test_refuses_special_files(
    tmp_path: Path, project: Path, signing_key: Ed25519PrivateKey
) -> None:
    os.mkfifo(project / "pipe")
    os.mkfifo(project / "app" / "deep.fifo")
    sock = socket.socket(socket.AF_UNIX)
    sock_path = project / "s.sock"
    try:
        sock.bind(str(sock_path))
        with (
            fifo_guard(project / "pipe", project / "app" / "deep.fifo"),
            pytest.raises(CapsuleInputError) as caught,
        ):
            build_capsule(make_inputs(project), tmp_path / "f.qlcapsule", signing_key)
    finally:
        sock.close()
    # Refused, each named with what it is; nothing skipped silently, nothing built.
    message = str(caught.value)
    assert "pipe (a FIFO, not a regular file)" in message
    assert "app/deep.fifo (a FIFO, not a regular file)" in message
    assert "s.sock (a socket, not a regular file)" in message
    assert not (tmp_path / "f.qlcapsule").exists()


def test_a_file_swapped_for_a_fifo_after_the_scan_is_refused(
    tmp_path: Path, project: Path, signing_key: Ed25519PrivateKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_scan = builder.scan_project
    target = project / "app" / "main.py"

    def scan_then_swap(root: Path, exclude: Sequence[str] = ()) -> list[tuple[str, Path]]:
        found = real_scan(root, exclude)
        target.unlink()
        os.mkfifo(target)  # what code still running in the project could do
        return found

    monkeypatch.setattr(builder, "scan_project", scan_then_swap)
    with fifo_guard(target), pytest.raises(CapsuleInputError) as caught:
        build_capsule(make_inputs(project), tmp_path / "w.qlcapsule", signing_key)
    assert str(caught.value) == (
        "project/app/main.py is a FIFO, not a regular file: it changed after the scan"
    )
    assert not (tmp_path / "w.qlcapsule").exists()


def test_a_declaration_swapped_for_a_fifo_is_refused_by_the_sbom(tmp_path: Path) -> None:
    fifo = tmp_path / "requirements.txt"
    os.mkfifo(fifo)
    with fifo_guard(fifo), pytest.raises(CapsuleInputError) as caught:
        build_sbom([("requirements.txt", fifo)], name="n", version="1", tool_version="0")
    assert str(caught.value) == (
        "requirements.txt is a FIFO, not a regular file: it changed after the scan"
    )


def test_exclude_patterns(tmp_path: Path, project: Path) -> None:
    (project / "app" / "__pycache__").mkdir()
    (project / "app" / "__pycache__" / "main.cpython-311.pyc").write_bytes(b"\0")
    (project / "notes.pyc").write_bytes(b"\0")
    names = [rel for rel, _ in scan_project(project, ["__pycache__", "*.pyc"])]
    assert names == sorted("/".join(p.split("/")) for p in PROJECT_FILES)
    assert "app/__pycache__/main.cpython-311.pyc" in [r for r, _ in scan_project(project)]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"tasks": [{"id": "../evil"}]}, "cannot name a file"),
        ({"tasks": [{"id": "QL-DEV-001"}, {"id": "QL-DEV-001"}]}, "appears twice"),
        ({"version": 0}, "version must be 1 or more"),
        ({"parent": "not-a-capsule"}, "is not a capsule id"),
        ({"scores": {"overall": -1}}, "manifest is not valid"),
        ({"transcript": [{"x": object()}]}, "transcript.jsonl record 1 cannot be stored as JSON"),
        ({"totals": {"tokens": 3}}, "totals:"),
        ({"intent_text": "  "}, "needs the intent id and text"),
    ],
)
def test_bad_inputs_are_refused(
    tmp_path: Path,
    project: Path,
    signing_key: Ed25519PrivateKey,
    changes: dict[str, object],
    message: str,
) -> None:
    with pytest.raises(CapsuleInputError, match=message):
        build_capsule(make_inputs(project, **changes), tmp_path / "x.qlcapsule", signing_key)
    assert not (tmp_path / "x.qlcapsule").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".qlcapsule-build-")]


def test_never_overwrites_without_asking(
    tmp_path: Path, project: Path, signing_key: Ed25519PrivateKey
) -> None:
    out = tmp_path / "o.qlcapsule"
    out.write_bytes(b"precious")
    with pytest.raises(CapsuleInputError, match="already exists"):
        build_capsule(make_inputs(project), out, signing_key)
    assert out.read_bytes() == b"precious"
    build_capsule(make_inputs(project), out, signing_key, overwrite=True)
    assert verify_capsule(out).ok
