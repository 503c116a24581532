"""Workspaces off local disk (issue 12): an intent stopped on one host continues on another
(another QLP_HOME, the same database) and finds its files there, rebuilt from the blob
store; a task that succeeded is not run again, and its dependents read its files."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import text

from qlp.domain.states import IntentStatus, TaskStatus
from qlp.errors import UserInputError
from tests.support import (
    PLAN_WHEN,
    files_answer,
    outcome,
    plan_answer,
    plan_task,
    scenario,
    task_when,
)

PLAN = {
    "when": PLAN_WHEN,
    "content": plan_answer([plan_task("QL-DEV-001"), plan_task("QL-TST-002", ["QL-DEV-001"])]),
}
DEV = {"when": task_when("QL-DEV-001"), "content": files_answer({"app/core.py": "VALUE = 41\n"})}
TST_BROKEN = {"when": task_when("QL-TST-002"), "status": 400}
TST = {"when": task_when("QL-TST-002"), "content": files_answer({"tests/test_core.py": "ok\n"})}


async def _failed_on_host_a(tmp_path: Path, db_url: str) -> str:
    async with scenario(tmp_path / "host-a", db_url, {"responses": [PLAN, DEV, TST_BROKEN]}) as (
        rt,
        _,
    ):
        pipeline = rt.pipeline()
        intent = await pipeline.submit("a core and its test")
        final = await pipeline.run(intent.id)
        assert final.status == IntentStatus.FAILED
    return intent.id


async def test_an_intent_continues_on_another_host_with_its_files(
    tmp_path: Path, db_url: str
) -> None:
    intent_id = await _failed_on_host_a(tmp_path, db_url)
    # Host B: its own QLP_HOME (no workspace of this intent), the same database.
    async with scenario(tmp_path / "host-b", db_url, {"responses": [TST]}) as (rt, server):
        final = await rt.pipeline().run(intent_id)
        out = await outcome(rt, intent_id)
    assert final.status == IntentStatus.COMPLETED
    assert out.tasks["QL-TST-002"].status == TaskStatus.SUCCEEDED
    workspace = tmp_path / "host-b" / "workspaces" / intent_id
    assert (workspace / "app" / "core.py").read_text() == "VALUE = 41\n"
    assert final.workspace == str(workspace)
    # Only the failed task asked the model, and it saw its dependency's file.
    assert len(server.requests) == 1
    assert "VALUE = 41" in server.requests[0].last_user_message


async def test_a_file_changed_on_disk_is_put_back_as_recorded(tmp_path: Path, db_url: str) -> None:
    intent_id = await _failed_on_host_a(tmp_path, db_url)
    changed = tmp_path / "host-a" / "workspaces" / intent_id / "app" / "core.py"
    changed.write_text("tampered\n")
    async with scenario(tmp_path / "host-a", db_url, {"responses": [TST]}) as (rt, server):
        await rt.pipeline().run(intent_id)
    assert changed.read_text() == "VALUE = 41\n"
    assert "tampered" not in server.requests[0].last_user_message


async def test_a_file_whose_content_is_nowhere_is_named(tmp_path: Path, db_url: str) -> None:
    intent_id = await _failed_on_host_a(tmp_path, db_url)
    async with scenario(tmp_path / "host-b", db_url, {"responses": [TST]}) as (rt, server):
        async with rt.store.engine.begin() as conn:  # as for an intent from before blobs
            await conn.execute(
                text(
                    "DELETE FROM blobs WHERE sha256 IN "
                    "(SELECT sha256 FROM files WHERE intent_id = :i)"
                ),
                {"i": intent_id},
            )
        with pytest.raises(UserInputError, match=r"app/core\.py .*continue it where it was"):
            await rt.pipeline().run(intent_id)
        assert server.requests == []
