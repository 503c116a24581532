"""Writes into the workspace never follow a link planted there (e.g. by sandboxed code), and
neither a read nor a write waits on a FIFO (or anything else not a regular file) left there."""

from __future__ import annotations

import hashlib
import os
import socket
from pathlib import Path

import pytest

from qlp.engine.workspace import Workspace
from qlp.errors import NotRegularFileError, UnsafePathError
from tests.fifo_guard import fifo_guard


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
    with pytest.raises(UnsafePathError, match="a symbolic link is there, not a regular file"):
        ws.write("a.py", "owned")
    assert target.read_text() == "precious"


def test_read_does_not_follow_links(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("s3cret")
    ws = Workspace(tmp_path / "ws")
    ws.ensure()
    os.symlink(secret, tmp_path / "ws" / "a.txt")
    with pytest.raises(NotRegularFileError, match=r"^a\.txt is a symbolic link, not a regular"):
        ws.read("a.txt")
    os.mkdir(tmp_path / "ws" / "real")
    (tmp_path / "ws" / "real" / "b.txt").write_text("b")
    os.symlink(tmp_path / "ws" / "real", tmp_path / "ws" / "via")
    with pytest.raises(NotRegularFileError, match=r"^via is a symbolic link, not a folder$"):
        ws.read("via/b.txt")


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


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    ws = Workspace(tmp_path / "ws")
    ws.ensure()
    return ws


def test_read_of_a_fifo_is_refused_at_once(ws: Workspace) -> None:
    (ws.root / "out").mkdir()
    os.mkfifo(ws.root / "out" / "a.txt")
    with fifo_guard(ws.root / "out" / "a.txt"), pytest.raises(NotRegularFileError) as caught:
        ws.read("out/a.txt")
    assert str(caught.value) == "out/a.txt is a FIFO, not a regular file"
    assert isinstance(caught.value, UnsafePathError)


def test_read_of_a_socket_or_a_folder_is_refused(ws: Workspace) -> None:
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.bind(str(ws.root / "s.txt"))
        with pytest.raises(NotRegularFileError, match=r"^s\.txt is a socket, not a regular file$"):
            ws.read("s.txt")
    finally:
        sock.close()
    (ws.root / "d.txt").mkdir()
    with pytest.raises(NotRegularFileError, match=r"^d\.txt is a folder, not a regular file$"):
        ws.read("d.txt")


def test_read_through_a_fifo_where_a_folder_was_is_refused(ws: Workspace) -> None:
    os.mkfifo(ws.root / "src")
    with fifo_guard(ws.root / "src"), pytest.raises(NotRegularFileError, match=r"^src is a FIFO"):
        ws.read("src/a.py")


def test_write_over_a_fifo_is_refused_and_it_is_left_unopened(ws: Workspace) -> None:
    os.mkfifo(ws.root / "a.py")
    with fifo_guard(ws.root / "a.py"):
        with pytest.raises(UnsafePathError, match="a FIFO is there, not a regular file"):
            ws.write("a.py", "x")
        done, error = ws.write_all([("ok.py", "1"), ("a.py", "2")])
    assert [w.path for w in done] == ["ok.py"] and isinstance(error, UnsafePathError)
    assert sorted(p.name for p in ws.root.iterdir()) == ["a.py", "ok.py"]  # no temp left


def test_a_fifo_planted_at_the_temporary_name_does_not_block_the_write(ws: Workspace) -> None:
    # The temporary name is predictable (.<name>.qlp-tmp-<pid>): code in the sandbox can put
    # a FIFO there; an open for writing would wait for a reader for ever.
    planted = ws.root / f".a.py.qlp-tmp-{os.getpid()}"
    os.mkfifo(planted)
    with fifo_guard(planted):
        written = ws.write("a.py", "A = 1\n")
    assert written.size == 6
    assert (ws.root / "a.py").read_text() == "A = 1\n"
    assert not os.path.lexists(planted)
