"""Writes into the workspace never follow a link planted there (e.g. by sandboxed code)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from qlp.engine.workspace import Workspace
from qlp.errors import UnsafePathError


def test_write_is_atomic_and_hashed(tmp_path: Path) -> None:
    ws = Workspace(tmp_path / "ws")
    ws.ensure()
    w = ws.write("src/a.py", "print('hi')\n")
    assert (tmp_path / "ws/src/a.py").read_text() == "print('hi')\n"
    assert w.sha256 == hashlib.sha256(b"print('hi')\n").hexdigest()
    assert w.size == 12
    ws.write("src/a.py", "")
    assert (tmp_path / "ws/src/a.py").read_text() == ""
    assert [p.name for p in (tmp_path / "ws/src").iterdir()] == ["a.py"]  # no temp left


def test_symlinked_folder_is_not_followed(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    ws = Workspace(tmp_path / "ws")
    ws.ensure()
    os.symlink(outside, tmp_path / "ws" / "src")
    with pytest.raises(UnsafePathError, match="is a link or not a folder"):
        ws.write("src/evil.py", "x")
    assert list(outside.iterdir()) == []


def test_symlinked_file_is_not_overwritten_through(tmp_path: Path) -> None:
    target = tmp_path / "host-file"
    target.write_text("precious")
    ws = Workspace(tmp_path / "ws")
    ws.ensure()
    os.symlink(target, tmp_path / "ws" / "a.py")
    with pytest.raises(UnsafePathError, match="a link or folder is there"):
        ws.write("a.py", "owned")
    assert target.read_text() == "precious"


def test_read_does_not_follow_links(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("s3cret")
    ws = Workspace(tmp_path / "ws")
    ws.ensure()
    os.symlink(secret, tmp_path / "ws" / "a.txt")
    with pytest.raises(OSError, match="Too many levels of symbolic links"):
        ws.read("a.txt")


def test_a_folder_made_by_another_write_meanwhile_is_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ws = Workspace(tmp_path / "ws")
    ws.ensure()
    real_mkdir = os.mkdir

    def racing_mkdir(path: str, mode: int = 0o777, *, dir_fd: int | None = None) -> None:
        real_mkdir(path, mode, dir_fd=dir_fd)  # another task's thread got there first
        real_mkdir(path, mode, dir_fd=dir_fd)

    monkeypatch.setattr(os, "mkdir", racing_mkdir)
    assert ws.write("a/b.txt", "x").path == "a/b.txt"
    assert (tmp_path / "ws/a/b.txt").read_text() == "x"


def test_a_link_planted_where_a_folder_goes_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    ws = Workspace(tmp_path / "ws")
    ws.ensure()
    os.symlink(outside, tmp_path / "ws" / "made")
    done, error = ws.write_all([("ok.txt", "1"), ("made/x.txt", "2")])
    assert [w.path for w in done] == ["ok.txt"]
    assert isinstance(error, UnsafePathError)
    assert list(outside.iterdir()) == []
