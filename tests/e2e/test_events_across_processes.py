"""A WebSocket subscriber of a real `qlp serve` gets, once each and in order, the events of
an intent that another OS process (`qlp resume`) runs on the same database."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosedOK

from qlp.engine.wiring import open_runtime
from tests.api_support import ApiServer, read_stream, running, server_env
from tests.fakes.llm_server import FakeLLMServer
from tests.support import dag_script

PASSWORD = "correct horse battery"


@pytest.fixture(scope="module")
def llm() -> Iterator[FakeLLMServer]:
    script = dag_script(
        {"QL-DEV-001": [], "QL-TST-002": ["QL-DEV-001"], "QL-DOC-003": [], "QL-DOC-004": []}
    )
    with FakeLLMServer({"responses": script * 10}, latency_s=0.02) as server:
        yield server


@pytest.fixture(scope="module")
def api(
    tmp_path_factory: pytest.TempPathFactory, db_url: str, llm: FakeLLMServer
) -> Iterator[ApiServer]:
    home = tmp_path_factory.mktemp("relay")
    server = ApiServer(server_env(home, db_url, llm.base_url), cwd=home)
    server.create_users(PASSWORD, {"root": "admin"})
    with running(server):
        yield server


def _until_closed(ws: Any, wait_s: float = 120) -> list[dict[str, Any]]:
    """Events until the server closes the stream; heartbeats keep a stream open, so the
    wait is bounded here (a stream that never gets its events fails, not hangs)."""
    out: list[dict[str, Any]] = []
    deadline = time.monotonic() + wait_s
    try:
        while True:
            message = json.loads(ws.recv(timeout=max(deadline - time.monotonic(), 0.01)))
            if message.get("event") == "intent":
                out.append(message)
    except ConnectionClosedOK:
        return out
    except TimeoutError:
        raise AssertionError(f"the stream did not end; it got {out}") from None


def _queued_intent(api: ApiServer) -> str:
    """An intent the server does not run: it only queues what was left queued at its start."""

    async def submit() -> str:
        async with open_runtime(api.settings()) as rt:
            record = await rt.pipeline(need_llm=False).submit("a todo CLI, relayed")
            return record.id

    return asyncio.run(submit())


def test_a_subscriber_gets_every_event_another_process_commits_once_in_order(
    api: ApiServer, llm: FakeLLMServer
) -> None:
    token = api.token("root", PASSWORD)
    intent_id = _queued_intent(api)
    with api.stream(intent_id, token, after=0) as ws, api.stream(intent_id, token) as ws2:
        first = read_stream(ws, count=1)
        assert [e["type"] for e in first] == ["intent.queued"]
        assert read_stream(ws2, count=1)[0]["seq"] == 1
        # Everything after the backlog is committed by this other process.
        resume = subprocess.run(
            [sys.executable, "-m", "qlp", "resume", intent_id],
            env=api.env,
            cwd=Path(api.env["QLP_HOME"]).parent,
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )
        assert resume.returncode == 0, resume.stdout + resume.stderr
        live = _until_closed(ws)
        live2 = _until_closed(ws2)
    with api.client(token) as c:
        stored = c.get(f"/intents/{intent_id}/events", params={"limit": 1000}).json()
    assert stored[-1]["type"] == "intent.completed"
    assert len(stored) > 10
    expected = [(e["seq"], e["type"]) for e in stored]
    assert [(e["seq"], e["type"]) for e in first + live] == expected
    assert [e["seq"] for e in live2] == [e["seq"] for e in stored[1:]]
