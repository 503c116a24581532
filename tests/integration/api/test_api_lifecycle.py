"""Intents over the API through their life: stream reconnects, cancel, resume, limits,
the token budget, and server restarts (graceful and SIGKILL) in the middle of an intent."""

from __future__ import annotations

import json
import signal
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
from websockets.sync.client import connect as ws_connect

from tests.api_support import API, ApiServer, read_stream, running, server_env
from tests.fakes.llm_server import FakeLLMServer
from tests.integration.api.conftest import PASSWORD
from tests.support import dag_script

CHAIN = {"QL-DEV-001": [], "QL-DEV-002": ["QL-DEV-001"], "QL-DOC-003": ["QL-DEV-002"]}


def test_stream_reconnect_with_after_has_no_gap_and_no_duplicate(api: ApiServer) -> None:
    token = api.token("ann", PASSWORD)
    with api.client(token) as c:
        intent_id = c.post("/intents", json={"text": "stream me"}).json()["id"]
    seen: list[dict[str, object]] = []
    # Read a few events at a time, hanging up in between, until the intent ends.
    for _ in range(100):
        after = int(seen[-1]["seq"]) if seen else 0  # type: ignore[call-overload]
        with api.stream(intent_id, token, after=after) as ws:
            got = read_stream(ws, count=3)
        seen.extend(got)
        if seen and seen[-1]["type"] == "intent.completed":
            break
    seqs = [int(e["seq"]) for e in seen]  # type: ignore[call-overload]
    assert seqs == list(range(1, len(seqs) + 1)), seqs
    with api.client(token) as c:
        stored = c.get(f"/intents/{intent_id}/events").json()
    assert [e["seq"] for e in stored] == seqs
    assert [e["type"] for e in stored] == [e["type"] for e in seen]


def test_stream_sends_heartbeats_while_idle(tmp_path: Path, db_url: str, api: ApiServer) -> None:
    token = api.token("ann", PASSWORD)
    with api.client(token) as c:
        intent_id = c.post("/intents", json={"text": "quick"}).json()["id"]
    api.wait_status(token, intent_id, {"completed"})
    # A finished intent: the backlog, then the server closes the stream itself.
    with api.stream(intent_id, token, after=0) as ws:
        events = read_stream(ws)
    assert events[-1]["type"] == "intent.completed"
    assert ws.close_code == 1000


@pytest.mark.parametrize("after", [str(2**63), str(2**62 + 1), "-1", "abc", "1.5", ""])
def test_stream_after_is_checked_like_the_rest_events_route(api: ApiServer, after: str) -> None:
    """One rule for `after`: the stream answers what GET /events answers (422 validation_error,
    the same detail), as a message and close code 4422; never a bigint overflow or a bare 403."""
    token = api.token("ann", PASSWORD)
    with api.client(token) as c:
        intent_id = c.post("/intents", json={"text": "quick"}).json()["id"]
        rest = c.get(f"/intents/{intent_id}/events", params={"after": after})
    assert rest.status_code == 422, rest.text
    url = f"ws://127.0.0.1:{api.port}{API}/intents/{intent_id}/stream?after={quote(after)}"
    with ws_connect(url, additional_headers={"Authorization": f"Bearer {token}"}) as ws:
        first = json.loads(ws.recv(timeout=10))
        assert read_stream(ws) == []
    assert ws.close_code == 4422
    assert first == {
        "type": "error",
        "code": "validation_error",
        "detail": rest.json()["detail"],
        "errors": rest.json()["errors"],
    }
    assert first["detail"].startswith("query.after: ")
    # The largest value allowed is fine for both: nothing comes after it.
    api.wait_status(token, intent_id, {"completed"})
    with api.client(token) as c:
        assert c.get(f"/intents/{intent_id}/events", params={"after": 2**62}).json() == []
    with api.stream(intent_id, token, after=2**62) as ws:
        assert read_stream(ws) == []
    assert ws.close_code == 1000


@pytest.fixture
def slow_llm() -> Iterator[FakeLLMServer]:
    script = dag_script(CHAIN, delay_s=0.6)
    with FakeLLMServer({"responses": script * 5}) as server:
        yield server


@pytest.fixture
def solo(tmp_path: Path, db_url: str, slow_llm: FakeLLMServer) -> Iterator[ApiServer]:
    env = server_env(
        tmp_path,
        db_url,
        slow_llm.base_url,
        QLP_USER_MAX_ACTIVE_INTENTS="2",
        QLP_SERVER_MAX_RUNNING="1",
    )
    server = ApiServer(env, cwd=tmp_path)
    server.create_user("dan", PASSWORD, "member")
    with running(server):
        yield server


def _events(server: ApiServer, token: str, intent_id: str) -> list[dict[str, object]]:
    with server.client(token) as c:
        found: list[dict[str, object]] = c.get(f"/intents/{intent_id}/events").json()
    return found


def _wait_event(server: ApiServer, token: str, intent_id: str, kind: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if any(e["type"] == kind for e in _events(server, token, intent_id)):
            return
        time.sleep(0.05)
    raise AssertionError(f"no {kind} event")


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL], ids=["graceful", "killed"])
def test_intent_completes_after_a_server_restart(solo: ApiServer, how: signal.Signals) -> None:
    token = solo.token("dan", PASSWORD)
    with solo.client(token) as c:
        intent_id = c.post("/intents", json={"text": "survive a restart"}).json()["id"]
    _wait_event(solo, token, intent_id, "task.succeeded")  # QL-DEV-001 done, 002 running
    code = solo.stop(how)
    if how == signal.SIGTERM:
        assert code == 0, solo.log()
    solo.start()
    token = solo.token("dan", PASSWORD)
    final = solo.wait_status(token, intent_id, {"completed", "failed", "cancelled"})
    assert final["status"] == "completed", final
    succeeded = Counter(
        str(e["payload"]["task_id"])  # type: ignore[index]
        for e in _events(solo, token, intent_id)
        if e["type"] == "task.succeeded"
    )
    # Each task succeeded once: the one done before the restart was not run again.
    assert succeeded == {"QL-DEV-001": 1, "QL-DEV-002": 1, "QL-DOC-003": 1}


def test_cancel_resume_and_the_active_intent_cap(solo: ApiServer) -> None:
    token = solo.token("dan", PASSWORD)
    with solo.client(token) as c:
        first = c.post("/intents", json={"text": "first"}).json()["id"]
        second = c.post("/intents", json={"text": "second"}).json()["id"]  # queued behind
        third = c.post("/intents", json={"text": "third"})
        assert third.status_code == 429 and "limit is 2" in third.json()["detail"]
        assert int(third.headers["retry-after"]) >= 1
        _wait_event(solo, token, first, "task.started")
        r = c.post(f"/intents/{first}/cancel")
        assert r.status_code == 200 and r.json()["status"] == "cancelled"
        r = c.post(f"/intents/{second}/cancel")  # still waiting in the queue
        assert r.status_code == 200 and r.json()["status"] == "cancelled"
        again = c.post(f"/intents/{second}/cancel")
        assert again.status_code == 409 and again.json()["code"] == "invalid_state"
        assert c.post(f"/intents/{first}/resume").status_code == 200
    final = solo.wait_status(token, first, {"completed", "failed"})
    assert final["status"] == "completed"
    events = [e["type"] for e in _events(solo, token, first)]
    assert "intent.cancelled" in events and "intent.resumed" in events


def test_refused_state_moves_are_409_problems_never_500(api: ApiServer) -> None:
    """Cancel, resume or decide on an intent whose state does not allow it: 409
    `invalid_state` problem+json naming the state it is in (a decision was a 400, and a
    decision that lost a race to a cancel a 500: tests/integration/test_review_flow.py)."""
    token = api.token("bob", PASSWORD)
    with api.client(token) as c:
        intent_id = c.post("/intents", json={"text": "done soon"}).json()["id"]
    api.wait_status(token, intent_id, {"completed"})
    with api.client(token) as c:
        for action, body in [
            ("cancel", None),
            ("resume", None),
            ("review", {"decision": "approve"}),
            ("review", {"decision": "reject", "reason": "too late"}),
            ("review", {"decision": "request_changes", "reason": "more", "tasks": ["QL-DEV-001"]}),
        ]:
            r = c.post(f"/intents/{intent_id}/{action}", json=body)
            assert r.status_code == 409, (action, body, r.status_code, r.text)
            assert r.headers["content-type"].startswith("application/problem+json")
            problem = r.json()
            assert problem["code"] == "invalid_state" and problem["current_status"] == "completed"
            assert problem["detail"].startswith(f"intent {intent_id} is completed; "), problem
        # A decision that is wrong in itself stays a 400, whatever the state.
        r = c.post(f"/intents/{intent_id}/review", json={"decision": "approve", "tasks": ["x"]})
        assert r.status_code == 400 and "takes no tasks" in r.json()["detail"]
        assert c.get(f"/intents/{intent_id}").json()["status"] == "completed"


def test_token_budget_stops_the_intent_with_a_clear_reason(
    tmp_path: Path, db_url: str, llm: FakeLLMServer
) -> None:
    env = server_env(tmp_path, db_url, llm.base_url, QLP_TOKEN_BUDGET_PER_INTENT="50")
    server = ApiServer(env, cwd=tmp_path)
    server.create_user("eve", PASSWORD, "member")
    with running(server):
        token = server.token("eve", PASSWORD)
        with server.client(token) as c:
            intent_id = c.post("/intents", json={"text": "spend a lot"}).json()["id"]
        final = server.wait_status(token, intent_id, {"completed", "failed"})
    assert final["status"] == "failed"
    assert "token budget of 50 exceeded" in final["error"]
    assert "QLP_TOKEN_BUDGET_PER_INTENT" in final["error"]


def test_bad_requests_are_problems_naming_the_field(api: ApiServer) -> None:
    with api.client(api.token("ann", PASSWORD)) as c:
        r = c.post("/intents", json={"text": "   "})
        assert r.status_code == 422
        body = r.json()
        assert r.headers["content-type"] == "application/problem+json"
        assert body["code"] == "validation_error" and body["errors"][0]["field"] == "body.text"
        r = c.post("/intents", json={"txt": "typo"})
        assert r.status_code == 422 and {"body.text", "body.txt"} <= {
            e["field"] for e in r.json()["errors"]
        }
        r = c.get("/intents", params={"cursor": "garbage!"})
        assert r.status_code == 400 and "cursor" in r.json()["detail"]
        r = c.get("/intents", params={"limit": 0})
        assert r.status_code == 422 and r.json()["errors"][0]["field"] == "query.limit"
        r = c.get("/no-such-route")
        assert r.status_code == 404 and r.json()["code"] == "not_found"
        assert r.headers["x-request-id"]


def test_pagination_walks_every_intent_once(api: ApiServer) -> None:
    token = api.token("bob", PASSWORD)
    with api.client(token) as c:
        made = {c.post("/intents", json={"text": f"page item {i}"}).json()["id"] for i in range(5)}
        seen: list[str] = []
        cursor = None
        while True:
            params: dict[str, object] = {"limit": 2, "q": "page item"}
            if cursor:
                params["cursor"] = cursor
            page = c.get("/intents", params=params).json()
            seen.extend(i["id"] for i in page["items"])
            cursor = page["next_cursor"]
            if cursor is None:
                break
    assert sorted(seen) == sorted(made) and len(seen) == len(set(seen))
    assert seen == sorted(seen, reverse=True)  # newest first (ids sort by time)
