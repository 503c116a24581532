"""Opening a file that untrusted code may have put in place: anything in the workspace (the
sandbox runs the project's code there), and what QLP later reads back from it.

Anything can stand at such a path: a FIFO (a plain open() of one waits for a writer, for
ever), a socket, a device node, a symlink, a folder. Every such read goes through
`open_regular` (or `open_in_tree`, which also walks the folders on the way):

- opened with O_NOFOLLOW (a symlink is refused, never followed), O_NONBLOCK (a FIFO opens at
  once instead of waiting for a writer; a device does not wait for a carrier), O_NOCTTY and
  O_CLOEXEC;
- the opened descriptor is fstat-ed (not the path, which could be swapped in between) and
  anything but a regular file is refused with NotRegularFileError, which names the path and
  what stands there ("out/a.txt is a FIFO, not a regular file"), before one byte is read;
- the descriptor is then put back into blocking mode (regular files ignore O_NONBLOCK).

So neither the caller nor its thread can be parked by what the tree holds. Walks of a tree
use `kind_of` to name what they skip or refuse.
"""

from __future__ import annotations

import os
import stat
from typing import BinaryIO

from qlp.errors import NotRegularFileError, UnsafePathError

READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC

StrPath = str | os.PathLike[str]


def kind_of(mode: int) -> str:
    """What a file of this st_mode is, as an error message says it ("a FIFO")."""
    if stat.S_ISREG(mode):
        return "a regular file"
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    return "a file of an unknown kind"


def _kind_at(path: StrPath, dir_fd: int | None) -> str | None:
    """What stands at `path` (not followed), when it is there and not a regular file."""
    try:
        mode = os.stat(path, dir_fd=dir_fd, follow_symlinks=False).st_mode
    except OSError:
        return None
    return None if stat.S_ISREG(mode) else kind_of(mode)


def open_regular(path: StrPath, *, dir_fd: int | None = None, shown: str | None = None) -> BinaryIO:
    """`path` (relative to `dir_fd` when given) opened for binary reading, if it is a regular
    file; NotRegularFileError naming it as `shown` (default: the path) if it is anything
    else. Other failures (missing, no permission) are the OSError of the open."""
    name = shown if shown is not None else os.fspath(path)
    try:
        fd = os.open(path, READ_FLAGS, dir_fd=dir_fd)
    except OSError:
        # ELOOP for a symlink, ENXIO for a socket: say what stands there, not the errno.
        kind = _kind_at(path, dir_fd)
        if kind is not None:
            raise NotRegularFileError(name, kind) from None
        raise
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotRegularFileError(name, kind_of(mode))
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _folder_in(fd: int, part: str, shown: str) -> int:
    try:
        return os.open(part, DIR_FLAGS, dir_fd=fd)
    except OSError:  # ELOOP / ENOTDIR: a symlink or a file stands where a folder should
        kind = _kind_at(part, fd)
        if kind is not None and kind != "a folder":
            raise NotRegularFileError(shown, kind, "a folder") from None
        raise


def open_in_tree(root: StrPath, rel: str) -> BinaryIO:
    """The regular file `rel` (a relative POSIX path) under the folder `root`, reached one
    folder at a time with O_NOFOLLOW relative to the last, so no symlink on the way is
    followed; each refusal names the part of `rel` at fault."""
    parts = rel.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise UnsafePathError(f"{rel!r} is not a relative path inside the project")
    fd = os.open(root, DIR_FLAGS)
    try:
        for depth, part in enumerate(parts[:-1], start=1):
            nxt = _folder_in(fd, part, "/".join(parts[:depth]))
            os.close(fd)
            fd = nxt
        return open_regular(parts[-1], dir_fd=fd, shown=rel)
    finally:
        os.close(fd)


def read_in_tree(root: StrPath, rel: str, limit: int | None = None) -> bytes:
    """The content of `open_in_tree(root, rel)`, at most `limit` bytes when given."""
    with open_in_tree(root, rel) as fh:
        return fh.read() if limit is None else fh.read(limit)


def read_regular(path: StrPath, limit: int | None = None, *, shown: str | None = None) -> bytes:
    """The content of `open_regular(path)`, at most `limit` bytes when given."""
    with open_regular(path, shown=shown) as fh:
        return fh.read() if limit is None else fh.read(limit)


__all__ = [
    "DIR_FLAGS",
    "READ_FLAGS",
    "NotRegularFileError",
    "kind_of",
    "open_in_tree",
    "open_regular",
    "read_in_tree",
    "read_regular",
]
