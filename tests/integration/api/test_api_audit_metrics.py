"""What the service records about itself: the audit log (rows for logins, changes and
decisions; tampering found by `qlp audit verify`) and the Prometheus metrics."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import psycopg
from sqlalchemy.engine import make_url

from tests.api_support import ApiServer, running, server_env
from tests.integration.api.conftest import PASSWORD


def _sql(db_url: str, statement: str) -> None:
    dsn = make_url(db_url).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(statement)  # type: ignore[arg-type]


def _audit_verify(api: ApiServer) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "qlp", "audit", "verify"],
        env=api.env,
        cwd=api.cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_audit_rows_for_logins_changes_and_a_tampered_row_is_found(
    api: ApiServer, db_url: str
) -> None:
    with api.client() as c:
        bad = c.post(
            "/auth/login",
            json={"username": "ann", "password": "wrong"},
            headers={"user-agent": "audit-test", "x-request-id": "req-bad-login"},
        )
        assert bad.status_code == 401
    token = api.token("ann", PASSWORD)
    with api.client(token) as c:
        r = c.post("/intents", json={"text": "audited"}, headers={"x-request-id": "req-submit"})
        intent_id = r.json()["id"]
        assert r.headers["x-request-id"] == "req-submit"
        assert c.get("/audit").status_code == 403  # members do not read the audit log
    with api.client(api.token("root", PASSWORD)) as c:
        rows = c.get("/audit", params={"limit": 1000}).json()
    by_request = {r["request_id"]: r for r in rows}
    login = by_request["req-bad-login"]
    assert (login["action"], login["outcome"], login["actor"]) == ("auth.login", "denied", "ann")
    assert login["user_agent"] == "audit-test" and login["client_ip"] == "127.0.0.1"
    submit = by_request["req-submit"]
    assert submit["action"] == "intent.create" and submit["outcome"] == "success"
    assert submit["details"] == {"intent_id": intent_id} and submit["actor"].startswith("QLU-")
    assert any(r["action"] == "auth.login" and r["outcome"] == "success" for r in rows)
    assert not any(r["action"].startswith("intent.get") for r in rows)  # reads are not audited

    ok = _audit_verify(api)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    _sql(db_url, f"UPDATE audit_log SET outcome = 'success' WHERE seq = {login['seq']}")
    tampered = _audit_verify(api)
    assert tampered.returncode == 1
    assert f"row {login['seq']}" in tampered.stdout + tampered.stderr


def test_metrics_count_requests_intents_tasks_and_tokens(api: ApiServer) -> None:
    token = api.token("bob", PASSWORD)
    with api.client(token) as c:
        intent_id = c.post("/intents", json={"text": "measure me"}).json()["id"]
    api.wait_status(token, intent_id, {"completed"})
    with api.client() as c:
        text = c.get("/metrics").text
    lines = text.splitlines()

    def value(prefix: str) -> float:
        found = [float(line.rsplit(" ", 1)[1]) for line in lines if line.startswith(prefix)]
        assert found, prefix
        return sum(found)

    assert value('qlp_http_requests_total{method="POST",route="/intents",status="202"}') >= 1
    assert value('qlp_intents{state="completed"}') >= 1
    assert value('qlp_task_duration_seconds_count{outcome="succeeded",type="codegen"}') >= 1
    assert value('qlp_llm_tokens_total{direction="output",model="gpt-4o-mini"}') > 0
    assert value("qlp_queue_depth") == 0


def test_health_and_readiness_say_what_they_checked(api: ApiServer) -> None:
    with api.client() as c:
        assert c.get("/healthz").json() == {"status": "ok"}
        ready = c.get("/readyz")
    assert ready.status_code == 200
    checks = ready.json()["checks"]
    assert checks["database"] == "ok" and checks["storage"] == "ok" and checks["llm"] == "ok"
    assert checks["runner"] == "ok" and checks["sandbox"].startswith("off")  # QLP_VALIDATE=false


def test_without_a_model_the_server_is_not_ready_and_says_why(tmp_path: Path, db_url: str) -> None:
    server = ApiServer(server_env(tmp_path, db_url, None), cwd=tmp_path)
    server.create_user("nomodel", PASSWORD, "member")
    with running(server):
        with server.client() as c:
            ready = c.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["checks"]["llm"].startswith("not configured")
        with server.client(server.token("nomodel", PASSWORD)) as c:
            r = c.post("/intents", json={"text": "anything"})
    assert r.status_code == 503 and r.json()["code"] == "misconfigured"
    assert "QLP_LLM_PROVIDER" in r.json()["detail"]
