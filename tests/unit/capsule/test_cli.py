"""`qlp capsule ...` and `qlp keys show` through typer's test runner."""

from __future__ import annotations

import base64
import json
import zipfile
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from typer.testing import CliRunner

from qlp.capsule.base import BuiltCapsule
from qlp.capsule.builder import build_capsule
from qlp.capsule.keys import key_file_path, public_key_pem, public_key_text
from qlp.cli.capsule import app, keys_app

from .conftest import flip_byte, make_inputs, rewrite

runner = CliRunner()


@pytest.fixture(autouse=True)
def _home(qlp_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QLP_HOME", str(qlp_home))
    monkeypatch.delenv("QLP_SIGNING_KEY", raising=False)


def test_keys_show_creates_then_reuses(qlp_home: Path) -> None:
    first = runner.invoke(keys_app, ["show"])
    assert first.exit_code == 0, first.output
    text = first.stdout.strip()
    assert text.startswith("ed25519:")
    assert "created a new signing key" in first.stderr
    assert key_file_path(qlp_home).is_file()
    second = runner.invoke(keys_app, ["show", "--json"])
    data = json.loads(second.stdout)
    assert data["public_key"] == text and data["created"] is False
    assert data["public_key_pem"].startswith("-----BEGIN PUBLIC KEY-----")
    pem = runner.invoke(keys_app, ["show", "--pem"])
    assert pem.stdout.startswith("-----BEGIN PUBLIC KEY-----")


def test_keys_show_uses_the_secret(monkeypatch: pytest.MonkeyPatch, qlp_home: Path) -> None:
    key = Ed25519PrivateKey.generate()
    from qlp.capsule.keys import private_key_pem

    monkeypatch.setenv("QLP_SIGNING_KEY", private_key_pem(key).decode())
    result = runner.invoke(keys_app, ["show", "--json"])
    assert json.loads(result.stdout)["public_key"] == public_key_text(key)
    assert json.loads(result.stdout)["source"] == "QLP_SIGNING_KEY"
    assert not key_file_path(qlp_home).exists()


def test_keys_show_refuses_exposed_key(qlp_home: Path) -> None:
    runner.invoke(keys_app, ["show"])
    key_file_path(qlp_home).chmod(0o644)
    result = runner.invoke(keys_app, ["show"])
    assert result.exit_code == 2
    assert "chmod 600" in result.stderr
    assert "Traceback" not in result.output


def test_verify_ok_self_signed_and_with_key(
    built: BuiltCapsule, signing_key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    result = runner.invoke(app, ["verify", str(built.path)])
    assert result.exit_code == 0, result.output
    assert "OK" in result.stdout and built.capsule_id in result.stdout
    assert "self-signed check" in result.stdout
    given = runner.invoke(app, ["verify", str(built.path), "--key", public_key_text(signing_key)])
    assert given.exit_code == 0 and "signed by the given key" in given.stdout
    pem = tmp_path / "pub.pem"
    pem.write_text(public_key_pem(signing_key))
    as_file = runner.invoke(app, ["verify", str(built.path), "--key", str(pem), "--json"])
    report = json.loads(as_file.stdout)
    assert report["ok"] is True and report["key_source"] == "given"


def test_verify_names_the_problem(built: BuiltCapsule, tmp_path: Path) -> None:
    def tamper(info: zipfile.ZipInfo, data: bytes):  # type: ignore[no-untyped-def]
        yield info, flip_byte(data) if info.filename == "project/app/main.py" else data

    bad = rewrite(built.path, tmp_path / "bad.qlcapsule", tamper)
    result = runner.invoke(app, ["verify", str(bad)])
    assert result.exit_code == 1
    assert "project/app/main.py: sha256 mismatch" in result.stderr
    as_json = runner.invoke(app, ["verify", str(bad), "--json"])
    assert as_json.exit_code == 1
    problems = json.loads(as_json.stdout)["problems"]
    assert problems == [
        {
            "entry": "project/app/main.py",
            "message": "sha256 mismatch: the content differs from the manifest",
        }
    ]


def test_verify_with_another_key_fails(built: BuiltCapsule) -> None:
    other = public_key_text(Ed25519PrivateKey.generate())
    result = runner.invoke(app, ["verify", str(built.path), "--key", other])
    assert result.exit_code == 1
    assert "manifest.sig: bad signature" in result.stderr


def test_bad_input_exits_2_without_traceback(tmp_path: Path, built: BuiltCapsule) -> None:
    missing = runner.invoke(app, ["verify", str(tmp_path / "nope.qlcapsule")])
    assert missing.exit_code == 2 and "no such capsule" in missing.stderr
    bad_key = runner.invoke(app, ["verify", str(built.path), "--key", "ed25519:AAAA"])
    assert bad_key.exit_code == 2 and "32 bytes" in bad_key.stderr
    junk = tmp_path / "junk.qlcapsule"
    junk.write_bytes(b"PK junk")
    not_zip = runner.invoke(app, ["verify", str(junk)])
    assert not_zip.exit_code == 1 and "not a readable zip" in not_zip.stderr
    for result in (missing, bad_key, not_zip):
        assert "Traceback" not in result.output


def test_show(built: BuiltCapsule) -> None:
    result = runner.invoke(app, ["show", str(built.path)])
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert built.capsule_id in out
    assert "Create a REST API" in out
    assert "coverage n/a" in out
    assert "approve by alice" in out
    assert "signature valid" in out
    data = json.loads(runner.invoke(app, ["show", str(built.path), "--json"]).stdout)
    assert data["manifest"]["capsule_id"] == built.capsule_id
    assert data["signature_valid"] is True


def test_show_reports_a_bad_signature(built: BuiltCapsule, tmp_path: Path) -> None:
    def tamper(info: zipfile.ZipInfo, data: bytes):  # type: ignore[no-untyped-def]
        if info.filename == "manifest.sig":
            raw = bytearray(base64.b64decode(data))
            raw[0] ^= 1
            data = base64.b64encode(bytes(raw))
        yield info, data

    bad = rewrite(built.path, tmp_path / "bad.qlcapsule", tamper)
    result = runner.invoke(app, ["show", str(bad)])
    assert "signature INVALID" in result.stdout
    assert "manifest.sig: bad signature" in result.stderr


def test_extract_and_force(built: BuiltCapsule, tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    result = runner.invoke(app, ["extract", str(built.path), str(dest)])
    assert result.exit_code == 0, result.output
    assert (dest / "project" / "app" / "main.py").is_file()
    again = runner.invoke(app, ["extract", str(built.path), str(dest)])
    assert again.exit_code == 2
    assert "--force" in again.stderr
    forced = runner.invoke(app, ["extract", str(built.path), str(dest), "--force", "--json"])
    assert forced.exit_code == 0
    assert json.loads(forced.stdout)["capsule_id"] == built.capsule_id


def test_extract_refuses_zip_slip(built: BuiltCapsule, tmp_path: Path) -> None:
    crafted = rewrite(
        built.path,
        tmp_path / "slip.qlcapsule",
        lambda info, data: [(info, data)],
        extra=[("../../evil.sh", b"rm -rf /")],
    )
    result = runner.invoke(app, ["extract", str(crafted), str(tmp_path / "dest")])
    assert result.exit_code == 1
    assert "../../evil.sh: unsafe entry" in result.stderr
    assert not (tmp_path / "dest").exists()


def test_diff(tmp_path: Path, project: Path, signing_key: Ed25519PrivateKey) -> None:
    a = build_capsule(make_inputs(project), tmp_path / "a.qlcapsule", signing_key)
    (project / "app" / "main.py").write_text("print('v2')\n")
    b = build_capsule(make_inputs(project, version=2), tmp_path / "b.qlcapsule", signing_key)
    result = runner.invoke(app, ["diff", str(a.path), str(b.path), "--patch"])
    assert result.exit_code == 0, result.output
    assert "M project/app/main.py" in result.stdout
    assert "+print('v2')" in result.stdout
    data = json.loads(runner.invoke(app, ["diff", str(a.path), str(b.path), "--json"]).stdout)
    assert [c["path"] for c in data["changes"]] == ["project/app/main.py"]


def test_diff_shows_changed_fields_as_text_not_reprs(
    tmp_path: Path, project: Path, signing_key: Ed25519PrivateKey
) -> None:
    """`capsule diff` printed `{'overall': 87, ...}` (a Python repr) for changed scores."""
    a = build_capsule(make_inputs(project), tmp_path / "a.qlcapsule", signing_key)
    b = build_capsule(
        make_inputs(project, version=2, scores={"overall": 91, "security": 100, "coverage": None}),
        tmp_path / "b.qlcapsule",
        signing_key,
    )
    result = runner.invoke(app, ["diff", str(a.path), str(b.path)])
    assert result.exit_code == 0, result.output
    assert "{'" not in result.stdout and "None" not in result.stdout, result.stdout
    line = next(x for x in result.stdout.splitlines() if x.strip().startswith("scores:"))
    assert "overall 87" in line and "overall 91" in line and "coverage n/a" in line, line


def test_hostile_capsule_text_is_shown_as_data(project: Path, tmp_path: Path) -> None:
    """The intent text, a file's content in --patch: markup literal, control characters
    escaped, never written raw to the terminal."""
    key = Ed25519PrivateKey.generate()
    hostile = "[/x] \x1b]0;pwned\x07 \u202eevil"
    a = build_capsule(make_inputs(project, intent_text=hostile), tmp_path / "a.qlcapsule", key)
    (project / "app" / "main.py").write_text("print('\x1b[2J')\n")
    b = build_capsule(make_inputs(project, version=2), tmp_path / "b.qlcapsule", key)
    shown = runner.invoke(app, ["show", str(a.path)])
    assert shown.exit_code == 0, shown.output
    assert "[/x] \\x1b]0;pwned\\x07 \\u202eevil" in shown.stdout
    patched = runner.invoke(app, ["diff", str(a.path), str(b.path), "--patch"])
    assert patched.exit_code == 0, patched.output
    assert "+print('\\x1b[2J')" in patched.stdout
    for out in (shown.stdout, patched.stdout):
        assert "\x1b" not in out and "\u202e" not in out
