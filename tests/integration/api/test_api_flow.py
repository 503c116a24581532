"""The service end to end over real HTTP and WebSocket on 127.0.0.1."""

from __future__ import annotations

from tests.api_support import ApiServer, read_stream
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
