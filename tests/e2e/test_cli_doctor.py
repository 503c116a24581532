"""`qlp doctor` on real parts: the embedded or given database, the local store, the
sandboxes of this machine, and a model that is the fake server (or nothing listening)."""

from __future__ import annotations

import json
import socket
from pathlib import Path

from tests.e2e.test_cli import qlp, qlp_env
from tests.fakes.llm_server import FakeLLMServer


def _model_env(tmp_path: Path, db_url: str, base_url: str) -> dict[str, str]:
    return qlp_env(
        tmp_path,
        db_url,
        QLP_LLM_PROVIDER="openai",
        QLP_LLM_MODEL="gpt-4o-mini",
        QLP_LLM_BASE_URL=base_url,
        QLP_LLM_MAX_RETRIES="0",
        OPENAI_API_KEY="test-key",
    )


def _checks(stdout: str) -> dict[str, dict[str, str]]:
    return {c["check"]: c for c in json.loads(stdout)["checks"]}


def test_a_ready_installation_passes_and_the_model_is_called_once(
    tmp_path: Path, db_url: str
) -> None:
    with FakeLLMServer([{"when": "Reply with the word OK", "content": "OK"}]) as server:
        res = qlp(
            "doctor", "--json", env=_model_env(tmp_path, db_url, server.base_url), cwd=tmp_path
        )
        calls = len(server.requests)
    assert res.returncode == 0, res.stdout + res.stderr
    checks = _checks(res.stdout)
    for name in ("configuration", "home", "database", "storage", "model"):
        assert checks[name]["state"] == "ok", checks[name]
    assert calls == 1
    assert any(k.startswith("sandbox bubblewrap") for k in checks)


def test_what_is_wrong_is_said_with_what_to_fix(tmp_path: Path, db_url: str) -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    res = qlp(
        "doctor", env=_model_env(tmp_path, db_url, f"http://127.0.0.1:{port}/v1"), cwd=tmp_path
    )
    assert res.returncode == 1
    assert "FAILED   model" in res.stdout and "fix:" in res.stdout
    assert "Traceback" not in res.stdout + res.stderr
    unconfigured = qlp("doctor", "--json", env=qlp_env(tmp_path, db_url), cwd=tmp_path)
    assert unconfigured.returncode == 1
    assert "QLP_LLM_PROVIDER" in _checks(unconfigured.stdout)["model"]["fix"]


def test_a_home_that_is_a_file_is_named(tmp_path: Path) -> None:
    env = qlp_env(tmp_path, None)
    Path(env["QLP_HOME"]).write_text("not a folder")
    res = qlp("doctor", "--json", "--no-model-call", env=env, cwd=tmp_path)
    assert res.returncode == 1
    checks = _checks(res.stdout)
    # The settings themselves refuse such a home, saying which variable to change.
    failed = checks.get("home") or checks["configuration"]
    assert failed["state"] == "FAILED" and "QLP_HOME" in failed["fix"] + failed["detail"]
