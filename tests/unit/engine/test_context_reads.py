"""A dependent task's context is read from the workspace in a thread, never on the event loop,
and a FIFO (or anything not a regular file) left at a dependency's path fails the read at
once with a message naming it, instead of blocking the engine."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

from qlp.domain.plan import Plan
from qlp.engine.pipeline import _IntentRun
from qlp.engine.workspace import Workspace
from qlp.errors import NotRegularFileError
from tests.fifo_guard import fifo_guard


def _run(tmp_path: Path) -> _IntentRun:
    plan = Plan.model_validate(
        {
            "tasks": [
                {"id": "QL-DEV-001", "type": "codegen", "title": "a"},
                {"id": "QL-TST-002", "type": "test", "title": "b", "dependencies": ["QL-DEV-001"]},
            ]
        }
    )
    intent = SimpleNamespace(id="QLI-TEST", workspace=str(tmp_path))
    files = {
        "out/a.txt": SimpleNamespace(task_id="QL-DEV-001"),
        "out/b.txt": SimpleNamespace(task_id="QL-DEV-001"),
    }
    return _IntentRun(SimpleNamespace(store=None), intent, plan, files)  # type: ignore[arg-type]


async def test_context_is_read_off_the_event_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ws = Workspace(tmp_path)
    ws.write("out/a.txt", "A\n")
    ws.write("out/b.txt", "B\n")
    readers: set[int] = set()
    real_read = Workspace.read

    def spy(self: Workspace, rel: str) -> str:
        readers.add(threading.get_ident())
        return real_read(self, rel)

    monkeypatch.setattr(Workspace, "read", spy)
    context = await _run(tmp_path)._context("QL-TST-002")
    assert [(f.path, f.content) for f in context] == [("out/a.txt", "A\n"), ("out/b.txt", "B\n")]
    assert readers and threading.get_ident() not in readers


async def test_a_fifo_at_a_dependency_file_is_refused_at_once(tmp_path: Path) -> None:
    ws = Workspace(tmp_path)
    ws.write("out/a.txt", "A\n")
    ws.write("out/b.txt", "B\n")
    os.unlink(tmp_path / "out" / "b.txt")
    os.mkfifo(tmp_path / "out" / "b.txt")  # what code run in the sandbox may leave
    with fifo_guard(tmp_path / "out" / "b.txt"), pytest.raises(NotRegularFileError) as caught:
        await _run(tmp_path)._context("QL-TST-002")
    assert caught.value.message == "out/b.txt is a FIFO, not a regular file"
