"""Tasks write their files at the same time; validation still sees a tree at rest, and two
tasks writing one path land in the order they claimed it."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from qlp.domain.artifacts import FileOut
from qlp.domain.plan import Plan
from qlp.engine.pipeline import _IntentRun
from qlp.engine.workspace import TreeLock, Workspace, WrittenFile
from qlp.errors import UnsafePathError


async def _settle() -> None:
    for _ in range(10):
        await asyncio.sleep(0)


async def test_writers_run_together_and_a_holder_waits_for_them_and_keeps_them_out() -> None:
    lock = TreeLock()
    first_in, first_go = asyncio.Event(), asyncio.Event()

    async def slow_writer() -> None:
        async with lock.writing():
            first_in.set()
            await first_go.wait()

    slow = asyncio.create_task(slow_writer())
    await first_in.wait()
    async with lock.writing():  # a second writer does not wait for the first
        pass

    held, release = asyncio.Event(), asyncio.Event()

    async def checker() -> None:
        async with lock:
            held.set()
            await release.wait()

    check = asyncio.create_task(checker())
    await _settle()
    assert not held.is_set()  # a write is still in progress
    first_go.set()
    await held.wait()

    entered = asyncio.Event()

    async def late_writer() -> None:
        async with lock.writing():
            entered.set()

    late = asyncio.create_task(late_writer())
    await _settle()
    assert not entered.is_set()  # the tree is being checked
    release.set()
    await asyncio.gather(slow, check, late)
    assert entered.is_set()


def _run(tmp_path: Path, *task_ids: str) -> _IntentRun:
    plan = Plan.model_validate(
        {"tasks": [{"id": t, "type": "codegen", "title": t} for t in task_ids]}
    )
    intent = SimpleNamespace(id="QLI-TEST", workspace=str(tmp_path))
    pipeline = SimpleNamespace(store=None, blobs=_Blobs())
    return _IntentRun(pipeline, intent, plan, {})  # type: ignore[arg-type]


class _Blobs:
    """Where the written contents would go (engine/pipeline.py `_write_after`)."""

    def __init__(self) -> None:
        self.stored: list[bytes] = []

    async def put(self, contents: Iterable[bytes]) -> list[str]:
        self.stored += contents
        return []


async def test_same_path_written_at_once_lands_in_claim_order(tmp_path: Path) -> None:
    run = _run(tmp_path, "QL-DEV-001", "QL-DEV-002")
    real = Workspace.write_all
    first_started, first_go = threading.Event(), threading.Event()

    def write_all(
        files: list[tuple[str, str]],
    ) -> tuple[list[WrittenFile], BaseException | None]:
        if files[0][1] == "FROM = 1\n":
            first_started.set()
            first_go.wait(10)
        return real(run.workspace, files)

    run.workspace.write_all = write_all  # type: ignore[method-assign]
    w1: dict[str, Any] = {}
    w2: dict[str, Any] = {}
    conflicts: list[dict[str, Any]] = []
    one = asyncio.create_task(
        run._write("QL-DEV-001", [FileOut(path="shared.py", content="FROM = 1\n")], w1, conflicts)
    )
    await asyncio.to_thread(first_started.wait, 10)
    # QL-DEV-002 (later in order) claims the path while QL-DEV-001 is still writing it.
    two = asyncio.create_task(
        run._write("QL-DEV-002", [FileOut(path="shared.py", content="FROM = 2\n")], w2, conflicts)
    )
    await _settle()
    assert not (tmp_path / "shared.py").exists()  # it waits for the first write to land
    first_go.set()
    assert await asyncio.gather(one, two) == [["shared.py"], ["shared.py"]]
    assert (tmp_path / "shared.py").read_text() == "FROM = 2\n"
    assert run.owners == {"shared.py": "QL-DEV-002"}
    assert conflicts == [{"path": "shared.py", "kept": "QL-DEV-002", "discarded": "QL-DEV-001"}]


async def test_a_failed_write_gives_the_path_back(tmp_path: Path) -> None:
    run = _run(tmp_path, "QL-DEV-001")
    (tmp_path / "taken").symlink_to(tmp_path)  # a link where a folder should be
    files = [FileOut(path="ok.txt", content="1"), FileOut(path="taken/x.txt", content="2")]
    written: dict[str, Any] = {}
    with pytest.raises(UnsafePathError, match="taken"):
        await run._write("QL-DEV-001", files, written, [])
    assert run.owners == {"ok.txt": "QL-DEV-001"}
    assert set(written) == {"ok.txt"}
