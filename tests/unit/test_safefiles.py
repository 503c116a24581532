"""qlp.safefiles: a file untrusted code may have put in place is read only if it is a regular
file, and whatever else stands there (FIFO, socket, device, symlink, folder) is refused at
once, named, without waiting and without leaking a descriptor."""

from __future__ import annotations

import os
import socket
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from qlp.errors import NotRegularFileError, UnsafePathError
from qlp.safefiles import kind_of, open_in_tree, open_regular, read_in_tree, read_regular
from tests.fifo_guard import fifo_guard


def _fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


@pytest.fixture
def no_fd_leak() -> Iterator[None]:
    before = _fds()
    yield
    assert _fds() <= before


@pytest.fixture
def sock_path(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "s.sock"
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(path))
    try:
        yield path
    finally:
        sock.close()


def test_a_regular_file_is_read_and_blocking(tmp_path: Path, no_fd_leak: None) -> None:
    (tmp_path / "a.txt").write_bytes(b"hello")
    with open_regular(tmp_path / "a.txt") as fh:
        assert os.get_blocking(fh.fileno())
        assert fh.read() == b"hello"
    assert read_regular(tmp_path / "a.txt", 2) == b"he"


def test_a_fifo_is_refused_at_once(tmp_path: Path, no_fd_leak: None) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with fifo_guard(fifo), pytest.raises(NotRegularFileError) as caught:
        read_regular(fifo, shown="out/pipe")
    assert str(caught.value) == "out/pipe is a FIFO, not a regular file"
    assert (caught.value.path, caught.value.kind) == ("out/pipe", "a FIFO")


def test_a_fifo_with_a_writer_is_refused_unread(tmp_path: Path, no_fd_leak: None) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    writer = os.open(fifo, os.O_RDWR | os.O_NONBLOCK)  # someone holds it open, data inside
    os.write(writer, b"data")
    outcome: list[BaseException | bytes] = []

    def read() -> None:
        try:
            outcome.append(read_regular(fifo))
        except BaseException as exc:
            outcome.append(exc)

    # In a thread: a read that waits for the writer to finish must fail the test, not hang.
    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout=5)
    waited = reader.is_alive()
    left = os.read(writer, 10) if not waited else b""
    os.close(writer)  # releases a waiting reader (end of file)
    reader.join(timeout=5)
    assert not waited, "the read waited on the FIFO's writer"
    assert len(outcome) == 1 and isinstance(outcome[0], NotRegularFileError), outcome
    assert "is a FIFO" in str(outcome[0])
    assert left == b"data"  # nothing was taken out of it


def test_a_socket_is_refused(sock_path: Path, no_fd_leak: None) -> None:
    with pytest.raises(NotRegularFileError, match=r"s\.sock is a socket, not a regular file"):
        read_regular(sock_path)


def test_a_device_is_refused(no_fd_leak: None) -> None:
    with pytest.raises(NotRegularFileError, match="is a character device"):
        read_regular("/dev/null")


def test_a_folder_is_refused(tmp_path: Path, no_fd_leak: None) -> None:
    (tmp_path / "d").mkdir()
    with pytest.raises(NotRegularFileError, match="d is a folder, not a regular file"):
        read_regular(tmp_path / "d")


def test_a_symlink_is_refused_not_followed(tmp_path: Path, no_fd_leak: None) -> None:
    (tmp_path / "secret").write_text("s3cret")
    (tmp_path / "link").symlink_to(tmp_path / "secret")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    for name in ("link", "dangling"):
        with pytest.raises(NotRegularFileError, match="is a symbolic link, not a regular file"):
            read_regular(tmp_path / name)


def test_missing_is_the_oserror(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_regular(tmp_path / "missing")


def test_relative_to_a_folder_descriptor(tmp_path: Path, no_fd_leak: None) -> None:
    (tmp_path / "a.txt").write_text("x")
    os.mkfifo(tmp_path / "p")
    dir_fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with open_regular("a.txt", dir_fd=dir_fd) as fh:
            assert fh.read() == b"x"
        with fifo_guard(tmp_path / "p"), pytest.raises(NotRegularFileError, match="p is a FIFO"):
            open_regular("p", dir_fd=dir_fd)
    finally:
        os.close(dir_fd)


def test_in_tree_walks_without_following_links(tmp_path: Path, no_fd_leak: None) -> None:
    root = tmp_path / "ws"
    (root / "src" / "pkg").mkdir(parents=True)
    (root / "src" / "pkg" / "a.py").write_text("A = 1\n")
    assert read_in_tree(root, "src/pkg/a.py") == b"A = 1\n"
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "a.py").write_text("secret")
    (root / "lib").symlink_to(outside)
    with pytest.raises(NotRegularFileError, match=r"^lib is a symbolic link, not a folder$"):
        read_in_tree(root, "lib/a.py")
    os.mkfifo(root / "src" / "fifo")
    with fifo_guard(root / "src" / "fifo"):
        with pytest.raises(NotRegularFileError, match=r"^src/fifo is a FIFO, not a folder$"):
            read_in_tree(root, "src/fifo/a.py")
        with pytest.raises(NotRegularFileError, match=r"^src/fifo is a FIFO, not a regular"):
            read_in_tree(root, "src/fifo")
    (root / "src" / "plain").write_text("x")
    with pytest.raises(NotADirectoryError):  # a file on the way: not a walk past it
        read_in_tree(root, "src/plain/a.py")
    with pytest.raises(FileNotFoundError):
        read_in_tree(root, "src/none/a.py")


@pytest.mark.parametrize("rel", ["../x", "a/../../x", "/etc/passwd", "a//b", "./a", ""])
def test_in_tree_refuses_paths_that_leave_it(tmp_path: Path, rel: str) -> None:
    with pytest.raises(UnsafePathError, match="not a relative path inside the project"):
        open_in_tree(tmp_path, rel)


def test_kind_names() -> None:
    assert kind_of(stat.S_IFREG) == "a regular file"
    assert kind_of(stat.S_IFDIR) == "a folder"
    assert kind_of(stat.S_IFLNK) == "a symbolic link"
    assert kind_of(stat.S_IFIFO) == "a FIFO"
    assert kind_of(stat.S_IFSOCK) == "a socket"
    assert kind_of(stat.S_IFCHR) == "a character device"
    assert kind_of(stat.S_IFBLK) == "a block device"
    assert kind_of(0) == "a file of an unknown kind"
