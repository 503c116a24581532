"""The attacker (code run in the sandbox: the project's own tests, a build step) leaves a
FIFO, a socket, a folder or a symlink at a path QLP reads later. A plain open() of a FIFO
waits for a writer for ever: it used to block the engine's event loop while building a
dependent task's context, and park one server thread per request on the file route.

No sandbox here: the FIFO is put in place directly, which is exactly what sandboxed code can
do to the workspace it may write; everything after that is the real engine, the real
service, the real capsule builder and validation inventory. Every FIFO is watched by
`fifo_guard`, so a regression fails (naming the FIFO) instead of hanging the suite.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy.engine import make_url

from qlp.capsule.base import CapsuleInputError
from qlp.capsule.builder import build_capsule
from qlp.domain.states import IntentStatus, TaskStatus
from qlp.engine.workspace import Workspace
from qlp.validation.kinds import classify
from tests.api_support import ApiServer
from tests.fifo_guard import fifo_guard
from tests.integration.api.conftest import PASSWORD, api, llm  # noqa: F401 (fixtures)
from tests.support import (
    PLAN_WHEN,
    files_answer,
    outcome,
    plan_answer,
    plan_task,
    scenario,
    task_when,
)
from tests.unit.capsule.conftest import make_inputs, write_project

PROBLEM = "application/problem+json"


def _replace_with_fifo(path: Path) -> None:
    path.unlink()
    os.mkfifo(path)


# -- the engine: a dependent task's context ---------------------------------------------------


async def test_fifo_at_a_dependency_file_fails_the_dependent_task_and_never_blocks_the_loop(
    qlp_home: Path, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """QL-DEV-001 writes out/dev.txt; before QL-TST-002 (which depends on it) starts, the
    file is swapped for a FIFO. QL-TST-002 fails at once, naming the FIFO; QL-DOC-003 (on
    its own, answering slowly) still succeeds; the event loop never stalls."""
    plan = [
        plan_task("QL-DEV-001"),
        plan_task("QL-TST-002", ["QL-DEV-001"]),
        plan_task("QL-DOC-003"),
    ]
    script = [
        {"when": PLAN_WHEN, "content": plan_answer(plan)},
        {"when": task_when("QL-DEV-001"), "content": files_answer({"out/dev.txt": "DEV\n"})},
        {"when": task_when("QL-TST-002"), "content": files_answer({"out/tst.txt": "TST\n"})},
        {
            "when": task_when("QL-DOC-003"),
            "content": files_answer({"out/doc.txt": "DOC\n"}),
            "delay_s": 1.0,
        },
    ]
    real_write_all = Workspace.write_all

    def write_then_plant(self: Workspace, files: Any) -> tuple[list[Any], BaseException | None]:
        result = real_write_all(self, files)
        if any(rel == "out/dev.txt" for rel, _ in files):
            _replace_with_fifo(self.root / "out" / "dev.txt")  # what sandboxed code can do
        return result

    monkeypatch.setattr(Workspace, "write_all", write_then_plant)
    async with scenario(qlp_home, db_url, script) as (rt, _):
        pipeline = rt.pipeline()
        intent = await pipeline.submit("build the thing")
        fifo = Path(intent.workspace) / "out" / "dev.txt"
        gaps: list[float] = []
        done = asyncio.Event()

        async def heartbeat() -> None:
            last = time.monotonic()
            while not done.is_set():
                await asyncio.sleep(0.02)
                now = time.monotonic()
                gaps.append(now - last)
                last = now

        beat = asyncio.create_task(heartbeat())
        try:
            with fifo_guard(fifo):
                await asyncio.wait_for(pipeline.run(intent.id), timeout=120)
        finally:
            done.set()
            await beat
        out = await outcome(rt, intent.id)
    assert out.tasks["QL-DEV-001"].status == TaskStatus.SUCCEEDED
    assert out.tasks["QL-TST-002"].status == TaskStatus.FAILED
    assert out.tasks["QL-TST-002"].error == "out/dev.txt is a FIFO, not a regular file"
    assert out.tasks["QL-DOC-003"].status == TaskStatus.SUCCEEDED
    assert out.intent.status == IntentStatus.FAILED
    assert max(gaps) < 2.5, f"the event loop stalled for {max(gaps):.2f} s"
    assert not (Path(out.intent.workspace) / "out" / "tst.txt").exists()


# -- the service: the file route --------------------------------------------------------------


@pytest.fixture(scope="module")
def done_intent(api: ApiServer) -> tuple[str, str, Path]:  # noqa: F811
    token = api.token("ann", PASSWORD)
    with api.client(token) as c:
        intent_id = str(c.post("/intents", json={"text": "a project to tamper with"}).json()["id"])
    api.wait_status(token, intent_id, {"completed"})
    workspace = api.home / "workspaces" / intent_id
    assert (workspace / "out" / "QL-DEV-001.txt").is_file()
    return token, intent_id, workspace


@pytest.fixture
def planted(done_intent: tuple[str, str, Path]) -> Iterator[Path]:
    """out/QL-DEV-001.txt, recorded as the task's file, replaced by a FIFO; put back after."""
    _, _, workspace = done_intent
    path = workspace / "out" / "QL-DEV-001.txt"
    _replace_with_fifo(path)
    try:
        yield path
    finally:
        path.unlink()
        path.write_text("content of QL-DEV-001\n")


def _get_at_once(api: ApiServer, token: str, url: str, n: int) -> list[tuple[int, str]]:  # noqa: F811
    """`n` GETs of `url`, 16 at a time, each on its own connection: (status, body) each."""

    def get(_: int) -> tuple[int, str]:
        with api.client(token) as each:
            each.timeout = httpx.Timeout(10)
            r = each.get(url)
            return r.status_code, r.text

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        return list(pool.map(get, range(n)))


@pytest.fixture
def no_blobs(api: ApiServer, done_intent: tuple[str, str, Path]) -> Iterator[None]:  # noqa: F811
    """The intent as one from before file contents were stored: its blobs removed (and put
    back after), so the file route reads this host's workspace."""
    _, intent_id, _ = done_intent
    url = make_url(api.env["QLP_DATABASE_URL"]).set(drivername="postgresql")
    with psycopg.connect(url.render_as_string(hide_password=False), autocommit=True) as conn:
        saved = conn.execute(
            "DELETE FROM blobs WHERE sha256 IN (SELECT sha256 FROM files WHERE intent_id = %s)"
            " RETURNING sha256, size, content, created_at",
            (intent_id,),
        ).fetchall()
        assert saved
        try:
            yield
        finally:
            with conn.cursor() as cur:
                cur.executemany(
                    "INSERT INTO blobs VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING", saved
                )


def test_file_route_serves_what_the_task_wrote_and_never_opens_the_fifo(
    api: ApiServer,  # noqa: F811
    done_intent: tuple[str, str, Path],
    planted: Path,
) -> None:
    token, intent_id, _ = done_intent
    url = f"/intents/{intent_id}/files/out/QL-DEV-001.txt"
    with fifo_guard(planted):
        answers = _get_at_once(api, token, url, 64)
    assert answers == [(200, "content of QL-DEV-001\n")] * 64


@pytest.mark.usefixtures("no_blobs")
def test_file_route_answers_409_for_a_fifo_at_once_and_parks_no_thread(
    api: ApiServer,  # noqa: F811
    done_intent: tuple[str, str, Path],
    planted: Path,
) -> None:
    token, intent_id, _ = done_intent
    url = f"/intents/{intent_id}/files/out/QL-DEV-001.txt"
    with fifo_guard(planted), api.client(token) as c:
        c.timeout = httpx.Timeout(10)
        r = c.get(url)
        assert r.status_code == 409, r.text
        assert r.headers["content-type"] == PROBLEM
        body = r.json()
        assert body["code"] == "conflict"
        assert "out/QL-DEV-001.txt is a FIFO, not a regular file" in body["detail"]

        # Many at once: with a parked thread per request, the server's thread pool (about
        # 40 threads) would run dry and the later ones, and every other file read, would wait.
        assert [status for status, _ in _get_at_once(api, token, url, 64)] == [409] * 64
        other = c.get(f"/intents/{intent_id}/files/out/QL-DOC-003.txt")
        assert other.status_code == 200 and other.text == "content of QL-DOC-003\n"


@pytest.mark.usefixtures("no_blobs")
@pytest.mark.parametrize("what", ["a socket", "a folder", "a symbolic link"])
def test_file_route_answers_409_for_other_things_in_place_of_a_file(
    api: ApiServer,  # noqa: F811
    done_intent: tuple[str, str, Path],
    what: str,
) -> None:
    token, intent_id, workspace = done_intent
    path = workspace / "out" / "QL-DOC-003.txt"
    path.unlink()
    sock = socket.socket(socket.AF_UNIX)
    try:
        if what == "a socket":
            sock.bind(str(path))
        elif what == "a folder":
            path.mkdir()
        else:
            path.symlink_to("/etc/passwd")
        with api.client(token) as c:
            r = c.get(f"/intents/{intent_id}/files/out/QL-DOC-003.txt")
        assert r.status_code == 409, r.text
        assert f"out/QL-DOC-003.txt is {what}, not a regular file" in r.json()["detail"]
        assert "root:" not in r.text
    finally:
        sock.close()
        if path.is_dir() and not path.is_symlink():
            path.rmdir()
        else:
            path.unlink()
        path.write_text("content of QL-DOC-003\n")


# -- packaging and validation -----------------------------------------------------------------


def test_packaging_refuses_a_project_holding_a_fifo_and_validation_skips_it(
    tmp_path: Path,
) -> None:
    project = write_project(tmp_path / "project")
    fifo = project / "app" / "main.py"
    _replace_with_fifo(fifo)  # a file the inventory and the capsule would both read
    key = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
    with fifo_guard(fifo):
        inventory = classify(project)
        with pytest.raises(CapsuleInputError) as caught:
            build_capsule(make_inputs(project), tmp_path / "c.qlcapsule", key)
    assert "app/main.py" not in inventory.all_files
    assert "app/main.py (a FIFO, not a regular file)" in str(caught.value)
    assert not (tmp_path / "c.qlcapsule").exists()
