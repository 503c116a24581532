"""Capsule downloads and uploads leave nothing in QLP_HOME/tmp, whatever the client does, and
never show a server path; a server started after a crash removes what the crash left.

A real `qlp serve` process (tests/api_support.py). The capsule is built with the real
builder and put in the server's store with its row, for an intent the server ran."""

from __future__ import annotations

import asyncio
import io
import os
import socket
import time
import zipfile
from datetime import UTC, datetime
from pathlib import Path

import pytest

from qlp.capsule.base import CapsuleInputs, ReviewDecision
from qlp.capsule.builder import build_capsule
from qlp.engine.wiring import make_capsule_store, open_runtime, signing_key
from qlp.store.reviews import CapsuleRecord, ReviewStore
from tests.api_support import API, ApiServer, read_stream
from tests.integration.api.conftest import PASSWORD

BIG = 24 * 1024 * 1024  # far more than the socket buffers hold: the server is mid-stream


def _leftovers(home: Path) -> list[str]:
    """Every file under QLP_HOME/tmp (the server's own, empty, scratch folder is fine)."""
    root = home / "tmp"
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if not p.is_dir())


def _wait_clean(home: Path, bound_s: float = 30) -> list[str]:
    """Polls (bounded) until nothing is left; returns what is left at the end."""
    deadline = time.monotonic() + bound_s
    while (left := _leftovers(home)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


@pytest.fixture(scope="module")
def capsule(api: ApiServer, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The id of a stored capsule of about BIG bytes (random content does not compress)."""
    token = api.token("ann", PASSWORD)
    with api.client(token) as c:
        intent_id = c.post("/intents", json={"text": "a capsule to download"}).json()["id"]
    with api.stream(intent_id, token) as ws:
        assert read_stream(ws)[-1]["type"] == "intent.completed"
    work = tmp_path_factory.mktemp("capsule")
    project = work / "project"
    project.mkdir()
    (project / "blob.bin").write_bytes(os.urandom(BIG))
    settings = api.settings()
    inputs = CapsuleInputs(
        intent_id=intent_id,
        intent_text="a capsule to download",
        project_dir=project,
        decision=ReviewDecision("approve", "ann", "2026-01-01T00:00:00Z", ""),
    )
    built = build_capsule(inputs, work / "c.qlcapsule", signing_key(settings))
    uri = make_capsule_store(settings).put(built.capsule_id, 1, built.path)
    _add_row(api, built.capsule_id, intent_id, uri, built.size, built.sha256, 1)
    return built.capsule_id


def _add_row(
    api: ApiServer, capsule_id: str, intent_id: str, uri: str, size: int, sha: str, version: int
) -> None:
    async def add() -> None:
        async with open_runtime(api.settings()) as rt:
            await ReviewStore(rt.store).add_capsule(
                CapsuleRecord(
                    id=capsule_id,
                    intent_id=intent_id,
                    version=version,
                    parent=None,
                    size=size,
                    sha256=sha,
                    uri=uri,
                    scores={},
                    decision=None,
                    created_at=datetime.now(UTC),
                )
            )

    asyncio.run(add())


def _partial_download(api: ApiServer, token: str, capsule_id: str, read: int) -> bytes:
    """GET the download, read `read` bytes of the answer, then close the socket."""
    got = b""
    with socket.create_connection(("127.0.0.1", api.port), timeout=30) as s:
        s.sendall(
            f"GET {API}/capsules/{capsule_id}/download HTTP/1.1\r\n"
            f"Host: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n\r\n".encode()
        )
        while len(got) < read and (chunk := s.recv(65536)):
            got += chunk
    return got


@pytest.mark.parametrize("read", [1, 300_000, 4_000_000])
def test_a_download_the_client_abandons_leaves_nothing(
    api: ApiServer, capsule: str, read: int
) -> None:
    token = api.token("ann", PASSWORD)
    for _ in range(3):
        head = _partial_download(api, token, capsule, read)
        assert head.startswith(b"HTTP/1.1 200"), head[:200]
    assert _wait_clean(api.home) == []
    # The server still serves the whole file afterwards.
    with api.client(token) as c, c.stream("GET", f"/capsules/{capsule}/download") as r:
        assert r.status_code == 200
        assert sum(len(b) for b in r.iter_bytes()) > BIG
    assert _wait_clean(api.home) == []


def test_an_upload_the_client_abandons_leaves_nothing(api: ApiServer) -> None:
    token = api.token("ann", PASSWORD)
    with socket.create_connection(("127.0.0.1", api.port), timeout=30) as s:
        s.sendall(
            f"POST {API}/capsules/verify HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Authorization: Bearer {token}\r\nContent-Type: application/octet-stream\r\n"
            f"Content-Length: {BIG}\r\n\r\n".encode()
        )
        s.sendall(b"PK" + b"\0" * 1_000_000)
    assert _wait_clean(api.home) == []


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b"this is not a zip", "not a readable zip"),
        (b"PK\x03\x04 truncated", "not a readable zip"),
        (None, "a zip without manifest.json"),
    ],
    ids=["text", "truncated-zip", "zip-without-manifest"],
)
def test_verifying_a_non_capsule_is_a_problem_without_server_paths(
    api: ApiServer, body: bytes | None, why: str
) -> None:
    if body is None:
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as zf:
            zf.writestr("hello.txt", "hi")
        body = buf.getvalue()
    token = api.token("ann", PASSWORD)
    with api.client(token) as c:
        r = c.post(
            "/capsules/verify", content=body, headers={"content-type": "application/octet-stream"}
        )
    assert r.status_code == 422, r.text
    assert r.headers["content-type"] == "application/problem+json"
    problem = r.json()
    assert problem["code"] == "not_a_capsule"
    assert problem["detail"].startswith("the request body is not a capsule (" + why)
    assert str(api.home) not in r.text and "/tmp" not in r.text
    assert _wait_clean(api.home) == []


def test_a_server_started_after_a_crash_removes_what_it_left(api: ApiServer) -> None:
    tmp = api.home / "tmp"
    # What a killed server leaves: its scratch folder (its lock died with it) with a copy in
    # it, and files older servers left loose.
    dead = tmp / "held-deadbeef"
    dead.mkdir()
    (dead / "download-x.qlcapsule").write_bytes(b"x" * 1000)
    (dead / ".download-x.qlcapsule.0123.tmp").write_bytes(b"x")
    (tmp / "download-old.qlcapsule").write_bytes(b"x" * 1000)
    (tmp / "verify-old.qlcapsule").write_bytes(b"x")
    # Not the service's: left alone.
    other = tmp / "qlp-capsule-cli"
    other.mkdir()
    (other / "keep.qlcapsule").write_bytes(b"k")
    api.stop()
    api.start()
    try:
        assert _leftovers(api.home) == ["qlp-capsule-cli/keep.qlcapsule"]
        assert not dead.exists()
        assert len([p for p in tmp.iterdir() if p.name.startswith("held-")]) == 1
    finally:
        (other / "keep.qlcapsule").unlink()
        other.rmdir()


def test_a_capsule_missing_from_storage_is_a_404_without_server_paths(
    api: ApiServer, capsule: str
) -> None:
    token = api.token("ann", PASSWORD)
    with api.client(token) as c:
        intent_id = c.get(f"/capsules/{capsule}").json()["intent_id"]
    lost = "QL-CAP-00000000000000aa"
    uri = (api.home / "capsules" / lost / "v1.qlcapsule").as_uri()
    _add_row(api, lost, intent_id, uri, 10, "0" * 64, version=2)
    with api.client(token) as c:
        r = c.get(f"/capsules/{lost}/download")
    assert r.status_code == 404, r.text
    assert r.json()["detail"] == f"capsule {lost}: its file is missing from storage"
    assert str(api.home) not in r.text
    assert _wait_clean(api.home) == []
