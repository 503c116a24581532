"""The scripts that run inside the sandbox read project files and tool reports that the
project's own code (its tests run there, as the same user, at the same time) could have
swapped for a FIFO: each is read only if it is a regular file, never waited on."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from qlp.validation.sandboxed import inspect_files, script, testrun
from tests.fifo_guard import fifo_guard


def test_a_report_left_as_a_fifo_is_no_report(tmp_path: Path) -> None:
    fifo = tmp_path / "junit.xml"
    os.mkfifo(fifo)
    (tmp_path / "coverage.json").write_text("{}")
    with fifo_guard(fifo), pytest.raises(OSError, match="not a regular file"):
        testrun._read_regular(str(fifo), 100)
    assert testrun._read_regular(str(tmp_path / "coverage.json"), 100) == b"{}"


def test_testrun_collects_around_a_fifo(tmp_path: Path) -> None:
    """The whole script, as the sandbox runs it (python -c SOURCE, JSON on stdin)."""
    fifo = tmp_path / "junit.xml"
    os.mkfifo(fifo)
    report = tmp_path / "coverage.json"
    report.write_text('{"totals": {}}')
    spec = {
        "argv": [sys.executable, "-c", "pass"],
        "timeout_s": 30,
        "collect": {"junit": str(fifo), "coverage": str(report)},
    }
    with fifo_guard(fifo):
        done = subprocess.run(
            [sys.executable, "-c", script("testrun")],
            input=json.dumps(spec),
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
    files = json.loads(done.stdout)["files"]
    assert files == {"junit": None, "coverage": '{"totals": {}}'}


def test_a_project_file_swapped_for_a_fifo_is_a_problem_not_a_wait(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    os.mkfifo("a.py")
    os.mkfifo("README.md")
    (tmp_path / "ok.py").write_text("x = 1\n")
    with fifo_guard(tmp_path / "a.py", tmp_path / "README.md"):
        with pytest.raises(OSError, match="a FIFO, not a regular file"):
            inspect_files._read("a.py")
        assert inspect_files.check_python("ok.py") is None
        docs = inspect_files.check_docs(["README.md"], ["README.md"])
    assert docs == {"required": {"README.md": "missing"}, "links": []}


def test_inspect_files_reports_a_fifo_as_unreadable(tmp_path: Path) -> None:
    """The whole script, as the sandbox runs it, with a FIFO among the files to parse."""
    os.mkfifo(tmp_path / "b.py")
    (tmp_path / "a.py").write_text("x = 1\n")
    spec = {"python": ["a.py", "b.py"], "count_lines": ["a.py", "b.py"]}
    with fifo_guard(tmp_path / "b.py"):
        done = subprocess.run(
            [sys.executable, "-c", script("inspect_files")],
            input=json.dumps(spec),
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
            cwd=tmp_path,
        )
    out = json.loads(done.stdout)
    assert out["results"]["python"]["a.py"] is None
    assert out["results"]["python"]["b.py"]["message"] == (
        "cannot read the file: a FIFO, not a regular file"
    )
    assert out["lines"] == {"a.py": 1}
