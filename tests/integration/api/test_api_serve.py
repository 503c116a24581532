"""`qlp serve` as a new user meets it: the ready line, /docs offline, request head limits,
and a scripted model that serves every intent."""

from __future__ import annotations

import contextlib
import json
import queue
import re
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.api_support import API, ApiServer, running, server_env
from tests.integration.api.conftest import PASSWORD
from tests.support import dag_script

ROOT = Path(__file__).resolve().parents[3]


# -- the ready line -----------------------------------------------------------------------
@contextlib.contextmanager
def serving(env: dict[str, str], cwd: Path) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """`qlp serve --port 0`, yielded once its ready line arrived, with everything it printed
    on stdout up to then."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "qlp", "serve", "--port", "0"],
        env=env,
        cwd=cwd,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    seen: list[str] = []
    try:
        while True:
            try:
                line = lines.get(timeout=90)
            except queue.Empty:
                raise AssertionError(f"no ready line; stdout so far: {seen}") from None
            if line is None:
                raise AssertionError(f"serve exited {proc.wait()}: {seen} {proc.stderr}")
            seen.append(line)
            if "  sandbox " in line:  # the last detail line
                break
        yield proc, "".join(seen)
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_ready_line_names_the_real_port_model_database_storage_sandbox(
    tmp_path: Path, db_url: str
) -> None:
    script = tmp_path / "script.json"
    script.write_text(json.dumps({"responses": dag_script({"QL-DEV-001": []})}))
    env = server_env(
        tmp_path, db_url, None, QLP_LLM_PROVIDER="scripted", QLP_LLM_SCRIPT=str(script)
    )
    with serving(env, tmp_path) as (_, out):
        found = re.search(r"listening on http://127\.0\.0\.1:(\d+) ", out)
        assert found, out
        port = int(found.group(1))
        assert port != 0
        # The printed address is the one that answers (--port 0 picked it).
        assert httpx.get(f"http://127.0.0.1:{port}{API}/healthz").status_code == 200
    assert f"docs http://127.0.0.1:{port}/docs" in out
    assert f"model     scripted, answers from {script}" in out
    assert "database  PostgreSQL at 127.0.0.1:" in out
    assert "password" not in out.lower() and "@" not in out
    assert f"storage   local folder {tmp_path / 'qlp' / 'capsules'}" in out
    assert "sandbox   none: validation is off" in out


def test_ready_line_warns_when_no_model_is_configured(tmp_path: Path, db_url: str) -> None:
    env = server_env(tmp_path, db_url, None, QLP_VALIDATE="true", QLP_SANDBOX="bubblewrap")
    with serving(env, tmp_path) as (proc, out):
        assert "model     none configured (QLP_LLM_PROVIDER)" in out
        assert "sandbox   bubblewrap" in out
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert "warning: no model is configured: every intent will fail" in err


# -- /docs without internet ---------------------------------------------------------------
def test_docs_load_nothing_from_another_host(api: ApiServer) -> None:
    page = httpx.get(f"{api.base}/docs")
    assert page.status_code == 200 and "SwaggerUIBundle" in page.text
    refs = re.findall(r"""(?:src|href)=["']([^"']+)["']""", page.text)
    assert refs, page.text
    assert all(ref.startswith("/") and not ref.startswith("//") for ref in refs), refs
    assert not re.search(r"https?://", page.text), "an absolute URL in /docs"
    # Swagger UI would send the document to swagger.io's validator without this.
    assert '"validatorUrl": null' in page.text
    kinds = {}
    for ref in refs:
        asset = httpx.get(f"{api.base}{ref}")
        assert asset.status_code == 200, ref
        assert len(asset.content) > 1000, ref
        kinds[ref.rsplit(".", 1)[-1]] = asset.headers["content-type"]
    assert kinds["js"].startswith("text/javascript")
    assert kinds["css"].startswith("text/css")
    assert httpx.get(f"{api.base}/docs/assets/index.html").status_code == 404
    assert httpx.get(f"{api.base}/docs/assets/..%2f..%2fapp.py").status_code == 404
    assert httpx.get(f"{api.base}/openapi.json").status_code == 200


# -- request head limits ------------------------------------------------------------------
def _raw(port: int, head: bytes) -> bytes:
    """Send a request head and read what comes back until the server closes (or 30 s)."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            s.sendall(head)
        out = b""
        with contextlib.suppress(ConnectionResetError, TimeoutError):
            while chunk := s.recv(65536):
                out += chunk
        return out


def _status(response: bytes) -> int | None:
    found = re.match(rb"HTTP/1\.1 (\d{3}) ", response)
    return int(found.group(1)) if found else None


def test_oversized_and_too_many_headers_are_refused_and_the_server_stays_up(
    api: ApiServer,
) -> None:
    start = f"GET {API}/healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n".encode()
    ok = _raw(api.port, start + b"Cookie: " + b"a" * 8000 + b"\r\nConnection: close\r\n\r\n")
    assert _status(ok) == 200  # an ordinary large cookie passes

    huge = start + b"X-Big: " + b"a" * (4 * 1024 * 1024) + b"\r\n\r\n"  # 4 MiB in one header
    refused = _raw(api.port, huge)
    assert _status(refused) in (431, None), refused[:200]
    assert _status(refused) == 431

    many = start + b"".join(b"X-H%d: 1\r\n" % i for i in range(150)) + b"\r\n"
    counted = _raw(api.port, many)
    assert _status(counted) == 431, counted[:200]
    assert b"Request header fields too large" in counted

    assert httpx.get(f"{api.base}{API}/healthz").status_code == 200
    assert api.proc is not None and api.proc.poll() is None


# -- a scripted model serves every intent --------------------------------------------------
@pytest.fixture(scope="module")
def scripted(tmp_path_factory: pytest.TempPathFactory, db_url: str) -> Iterator[ApiServer]:
    home = tmp_path_factory.mktemp("scripted")
    script = home / "script.json"
    plan = {"QL-DEV-001": [], "QL-TST-002": ["QL-DEV-001"]}
    script.write_text(json.dumps({"responses": dag_script(plan)}))  # one intent's answers
    server = ApiServer(
        server_env(home, db_url, None, QLP_LLM_PROVIDER="scripted", QLP_LLM_SCRIPT=str(script)),
        cwd=home,
    )
    server.create_users(PASSWORD, {"sam": "member"})
    with running(server):
        yield server


def test_one_scripted_server_builds_every_intent_from_the_start(scripted: ApiServer) -> None:
    token = scripted.token("sam", PASSWORD)
    with scripted.client(token) as c:
        first = c.post("/intents", json={"text": "the first build"}).json()["id"]
        done = scripted.wait_status(token, first, {"completed", "failed"})
        assert done["status"] == "completed", done
        # The second intent gets the whole script again, not what the first left of it.
        second = c.post("/intents", json={"text": "the same build again"}).json()["id"]
        again = scripted.wait_status(token, second, {"completed", "failed"})
        assert again["status"] == "completed", again
        tasks = c.get(f"/intents/{second}").json()
    assert {t["status"] for t in tasks.get("tasks", [])} <= {"succeeded"}
