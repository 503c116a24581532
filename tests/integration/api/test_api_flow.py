"""The service end to end over real HTTP and WebSocket on 127.0.0.1."""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from qlp.capsule.keys import parse_public_key_text
from qlp.capsule.verify import verify_capsule
from tests.api_support import ROOT, ApiServer, read_stream, running, server_env
from tests.fakes.llm_server import FakeLLMServer
from tests.integration.api.conftest import PASSWORD


def test_submit_follow_and_read_back(api: ApiServer) -> None:
    token = api.token("ann", PASSWORD)
    with api.client(token) as c:
        r = c.post("/intents", json={"text": "build the thing", "options": {"team": "a"}})
        assert r.status_code == 202, r.text
        intent = r.json()
        assert intent["status"] == "queued" and intent["options"] == {"team": "a"}
        assert r.headers["location"].endswith(intent["id"])
        with api.stream(intent["id"], token) as ws:
            events = read_stream(ws)
        seqs = [e["seq"] for e in events]
        assert seqs == list(range(1, len(seqs) + 1))
        assert events[-1]["type"] == "intent.completed"
        detail = c.get(f"/intents/{intent['id']}").json()
        assert detail["status"] == "completed"
        assert {t["id"]: t["status"] for t in detail["tasks"]} == {
            "QL-DEV-001": "succeeded",
            "QL-TST-002": "succeeded",
            "QL-DOC-003": "succeeded",
        }
        files = c.get(f"/intents/{intent['id']}/files").json()
        assert [f["path"] for f in files] == [
            "out/QL-DEV-001.txt",
            "out/QL-DOC-003.txt",
            "out/QL-TST-002.txt",
        ]
        body = c.get(f"/intents/{intent['id']}/files/out/QL-DEV-001.txt")
        assert body.status_code == 200 and body.text == "content of QL-DEV-001\n"
        assert body.headers["x-content-type-options"] == "nosniff"
        listed = c.get("/intents", params={"q": "THE THING", "status": "completed"}).json()
        assert intent["id"] in [i["id"] for i in listed["items"]]
        replay = c.get(f"/intents/{intent['id']}/events", params={"after": 3}).json()
        assert [e["seq"] for e in replay] == seqs[3:]


# -- with validation, review and capsules (the sandbox and the scanners run for real) --------
EXAMPLES = ROOT / "examples"


def _todo_with_second_readme() -> dict[str, Any]:
    """The todo-cli script plus a second README answer, for a round of changes."""
    script: dict[str, Any] = json.loads((EXAMPLES / "todo-cli" / "script.json").read_text())
    doc = next(r for r in script["responses"] if "QL-DOC-001" in r.get("when", ""))
    answer = json.loads(doc["content"])
    for f in answer["files"]:
        if f["path"] == "README.md":
            f["content"] += "\nChanged on review: every command prints what it did.\n"
    script["responses"].append({"when": doc["when"], "content": json.dumps(answer)})
    return script


@pytest.fixture
def validating(tmp_path: Path, db_url: str, request: pytest.FixtureRequest) -> Iterator[ApiServer]:
    example, policy = request.param
    script = (
        _todo_with_second_readme()
        if example == "todo-cli"
        else json.loads((EXAMPLES / example / "script.json").read_text())
    )
    with FakeLLMServer(script) as fake:
        env = server_env(
            tmp_path, db_url, fake.base_url, QLP_VALIDATE="true", QLP_REVIEW_POLICY=policy
        )
        server = ApiServer(env, cwd=tmp_path)
        server.create_user("ann", PASSWORD, "member")
        with running(server):
            yield server


def _submit(server: ApiServer, token: str, example: str) -> str:
    with server.client(token) as c:
        text = (EXAMPLES / example / "intent.txt").read_text()
        r = c.post("/intents", json={"text": text})
        assert r.status_code == 202, r.text
        return str(r.json()["id"])


@pytest.mark.slow
@pytest.mark.parametrize("validating", [("todo-cli", "always")], indirect=True)
def test_review_approve_download_and_verify_the_capsule(
    validating: ApiServer, tmp_path: Path
) -> None:
    api = validating
    token = api.token("ann", PASSWORD)
    intent_id = _submit(api, token, "todo-cli")
    with api.stream(intent_id, token) as ws:
        events = read_stream(ws, until="review.required")
    assert events[-1]["type"] == "review.required"
    with api.client(token) as c:
        detail = c.get(f"/intents/{intent_id}").json()
        assert detail["status"] == "reviewing" and detail["review"]["verdict"]
        r = c.post(f"/intents/{intent_id}/review", json={"decision": "approve"})
        assert r.status_code == 200, r.text
        assert r.json()["status"] in ("packaging", "completed")
    with api.stream(intent_id, token, after=int(events[-1]["seq"])) as ws:
        rest = read_stream(ws)
    assert rest[-1]["type"] == "intent.completed", rest[-3:]
    with api.client(token) as c:
        capsules = c.get("/capsules", params={"intent_id": intent_id}).json()["items"]
        assert len(capsules) == 1
        capsule = capsules[0]
        assert capsule["decision"]["decision"] == "approve"
        key = c.get("/keys/capsule").json()["key"]
        with c.stream("GET", f"/capsules/{capsule['id']}/download") as r:
            assert r.status_code == 200
            assert r.headers["content-type"] == "application/zip"
            data = b"".join(r.iter_bytes())
        assert len(data) == capsule["size"]
        assert hashlib.sha256(data).hexdigest() == capsule["sha256"]
        path = tmp_path / "downloaded.qlcapsule"
        path.write_bytes(data)
        local = verify_capsule(path, parse_public_key_text(key))
        assert local.ok and local.signature_valid, local.problems
        report = c.post(
            "/capsules/verify",
            content=data,
            headers={"content-type": "application/octet-stream"},
        ).json()
        assert report["ok"] and report["signed_by_this_server"]
        # One changed byte inside the archive is caught and named.
        tampered = _flip_project_byte(data)
        bad = c.post("/capsules/verify", content=tampered).json()
        assert not bad["ok"] and bad["problems"]
        metrics = c.get("/metrics").text
    # The checks ran in the sandbox, and the metrics counted them.
    runs = [
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("qlp_sandbox_runs_total{")
    ]
    assert sum(runs) > 0


def _flip_project_byte(data: bytes) -> bytes:
    """The capsule with one project file's content changed (re-zipped, same names)."""
    src = zipfile.ZipFile(io.BytesIO(data))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as dst:
        changed = False
        for info in src.infolist():
            body = src.read(info)
            if not changed and info.filename.startswith("project/") and body:
                body = bytes([body[0] ^ 1]) + body[1:]
                changed = True
            dst.writestr(info, body)
    assert changed
    return out.getvalue()


@pytest.mark.slow
@pytest.mark.parametrize("validating", [("insecure-notes", "never_auto")], indirect=True)
def test_gate_blocks_approval_then_reject(validating: ApiServer) -> None:
    api = validating
    token = api.token("ann", PASSWORD)
    intent_id = _submit(api, token, "insecure-notes")
    detail = api.wait_status(token, intent_id, {"reviewing", "failed", "completed"}, 300)
    assert detail["status"] == "reviewing", detail
    with api.client(token) as c:
        r = c.post(f"/intents/{intent_id}/review", json={"decision": "approve"})
        assert r.status_code == 400 and "cannot approve" in r.json()["detail"]
        r = c.post(f"/intents/{intent_id}/review", json={"decision": "reject"})
        assert r.status_code == 400 and "reason" in r.json()["detail"]
        r = c.post(
            f"/intents/{intent_id}/review",
            json={"decision": "reject", "reason": "stores passwords in clear"},
        )
        assert r.status_code == 200 and r.json()["status"] == "rejected"
        assert c.get("/capsules", params={"intent_id": intent_id}).json()["items"] == []


@pytest.mark.slow
@pytest.mark.parametrize("validating", [("todo-cli", "always")], indirect=True)
def test_request_changes_reruns_the_named_task_then_approve(validating: ApiServer) -> None:
    api = validating
    token = api.token("ann", PASSWORD)
    intent_id = _submit(api, token, "todo-cli")
    api.wait_status(token, intent_id, {"reviewing", "failed"}, 300)
    with api.client(token) as c:
        before = {t["id"]: t["attempts"] for t in c.get(f"/intents/{intent_id}").json()["tasks"]}
        seen = c.get(f"/intents/{intent_id}/events", params={"limit": 1000}).json()[-1]["seq"]
        r = c.post(
            f"/intents/{intent_id}/review",
            json={
                "decision": "request_changes",
                "reason": "say in the README what each command prints",
                "tasks": ["QL-DOC-001"],
            },
        )
        assert r.status_code == 200, r.text
        assert r.json()["status"] == "executing"
    with api.stream(intent_id, token, after=seen) as ws:
        events = read_stream(ws, until="review.required")
    kinds = [e["type"] for e in events]
    assert "task.requeued" in kinds and events[-1]["payload"]["round"] == 2, kinds
    detail = api.wait_status(token, intent_id, {"reviewing"}, 300)
    assert detail["review"]["round"] == 2
    after = {t["id"]: t["attempts"] for t in detail["tasks"]}
    assert {t: after[t] - before[t] for t in after if after[t] != before[t]} == {"QL-DOC-001": 1}
    with api.client(token) as c:
        readme = c.get(f"/intents/{intent_id}/files/README.md").text
        assert "Changed on review" in readme
        r = c.post(f"/intents/{intent_id}/review", json={"decision": "approve"})
        assert r.status_code == 200, r.text
    final = api.wait_status(token, intent_id, {"completed", "failed"}, 120)
    assert final["status"] == "completed"
    with api.client(token) as c:
        capsules = c.get("/capsules", params={"intent_id": intent_id}).json()["items"]
    by_version = {c["version"]: c for c in capsules}
    assert sorted(by_version) == [1, 2]
    assert by_version[2]["parent"] == by_version[1]["id"]
    assert by_version[2]["decision"]["decision"] == "approve"
