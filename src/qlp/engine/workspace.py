"""The intent's project tree on disk: safe, atomic writes that never follow a link.

Code run later in the sandbox can leave symlinks in the workspace; a write must never be
redirected through one to a host path. So every path is walked one directory at a time
with O_NOFOLLOW, and each file is written to a temporary name and renamed into place.

It can also leave a FIFO, a socket or a device where a file was: a read goes through
`qlp.safefiles` (non-blocking open, refused unless it is a regular file), and the temporary
file of a write is created exclusively, so neither can wait for ever on what the tree holds.

The tree on disk is this host's copy, not the truth: the `files` table names each path's
sha256 and the blob store holds the bytes, so any host rebuilds it (`stale` says what is
missing or differs; the pipeline writes those from the blob store before it works on an
intent). Files the sandbox made that no task wrote (build output, caches) are left alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import stat
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from qlp.errors import UnsafePathError
from qlp.safefiles import DIR_FLAGS as _DIR_FLAGS
from qlp.safefiles import kind_of, open_in_tree, read_in_tree

# Created exclusively and never waiting: a FIFO planted at the temporary name is not opened.
_TMP_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


@dataclass(frozen=True)
class WrittenFile:
    path: str
    sha256: str
    size: int


class Workspace:
    def __init__(self, root: Path) -> None:
        self.root = root

    def ensure(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True, mode=0o755)

    @staticmethod
    def _open_folder(fd: int, part: str, *, create: bool) -> int:
        try:
            return os.open(part, _DIR_FLAGS, dir_fd=fd)
        except FileNotFoundError:
            if not create:
                raise
        # Another task's write may create the same folder at the same moment.
        with contextlib.suppress(FileExistsError):
            os.mkdir(part, 0o755, dir_fd=fd)
        return os.open(part, _DIR_FLAGS, dir_fd=fd)

    def _open_parent(self, rel: str, *, create: bool) -> tuple[int, str]:
        """Return an fd of the folder holding `rel` (walked without following links)."""
        parts = rel.split("/")
        fd = os.open(self.root, _DIR_FLAGS)
        try:
            for part in parts[:-1]:
                try:
                    nxt = self._open_folder(fd, part, create=create)
                except FileNotFoundError:
                    raise
                except OSError as exc:  # ELOOP / ENOTDIR: a link or a file stands there
                    raise UnsafePathError(
                        f"refusing to write {rel}: {part!r} is a link or not a folder"
                    ) from exc
                os.close(fd)
                fd = nxt
        except BaseException:
            os.close(fd)
            raise
        return fd, parts[-1]

    def write(self, rel: str, content: str) -> WrittenFile:
        return self.write_bytes(rel, content.encode("utf-8"))

    def write_bytes(self, rel: str, data: bytes) -> WrittenFile:
        dir_fd, name = self._open_parent(rel, create=True)
        tmp = f".{name}.qlp-tmp-{os.getpid()}"
        try:
            with contextlib.suppress(FileNotFoundError):
                existing = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
                if not stat.S_ISREG(existing.st_mode):
                    raise UnsafePathError(
                        f"refusing to write {rel}: {kind_of(existing.st_mode)} is there, "
                        "not a regular file"
                    )
            try:
                fd = os.open(tmp, _TMP_FLAGS, 0o644, dir_fd=dir_fd)
            except FileExistsError:  # left by a crash, or planted: removed, never opened
                os.unlink(tmp, dir_fd=dir_fd)
                fd = os.open(tmp, _TMP_FLAGS, 0o644, dir_fd=dir_fd)
            os.set_blocking(fd, True)
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=dir_fd)
            raise
        finally:
            os.close(dir_fd)
        return WrittenFile(path=rel, sha256=hashlib.sha256(data).hexdigest(), size=len(data))

    def read(self, rel: str) -> str:
        """The text of `rel`. NotRegularFileError (an UnsafePathError) if a FIFO, socket,
        device, symlink or folder stands at it or on the way to it; OSError if it is missing.
        Blocking file I/O: async code calls it in a thread (asyncio.to_thread)."""
        with open_in_tree(self.root, rel) as fh:
            return fh.read().decode("utf-8", errors="replace")

    def stale(self, files: Mapping[str, str]) -> list[str]:
        """The paths of `files` (path -> sha256) whose copy here is missing or differs (or
        cannot be read as a regular file without following a link)."""
        out = []
        for rel, digest in sorted(files.items()):
            try:
                data = read_in_tree(self.root, rel)
            except (OSError, UnsafePathError):
                out.append(rel)
                continue
            if hashlib.sha256(data).hexdigest() != digest:
                out.append(rel)
        return out

    def write_all_bytes(self, files: Sequence[tuple[str, bytes]]) -> list[WrittenFile]:
        """Write files in order; the first failure is raised."""
        return [self.write_bytes(rel, data) for rel, data in files]

    def write_all(
        self, files: Sequence[tuple[str, str]]
    ) -> tuple[list[WrittenFile], BaseException | None]:
        """Write files in order; stop at the first that fails. Returns what was written and
        the failure (one call, so a thread pool runs a task's files as one job)."""
        done: list[WrittenFile] = []
        for rel, content in files:
            try:
                done.append(self.write(rel, content))
            except Exception as exc:  # returned with what was written before it
                return done, exc
        return done, None


class TreeLock(asyncio.Lock):
    """Guards the project tree. Holding it (``async with``), as a validation check does,
    means nothing writes: it waits for writes in progress and keeps new ones out. Writers
    use `writing()` instead: they only wait while the lock is held, and may run together.
    (File writes of concurrent tasks used to take turns under one lock; fsync-ed one after
    another, they were a queue that every task finishing in the same wave waited in.)"""

    def __init__(self) -> None:
        super().__init__()
        self._writers = 0
        self._idle = asyncio.Event()
        self._idle.set()

    async def acquire(self) -> Literal[True]:
        await super().acquire()
        try:
            await self._idle.wait()
        except BaseException:
            self.release()
            raise
        return True

    @contextlib.asynccontextmanager
    async def writing(self) -> AsyncIterator[None]:
        await super().acquire()  # not while the tree is being checked
        self._writers += 1
        self._idle.clear()
        self.release()
        try:
            yield
        finally:
            self._writers -= 1
            if not self._writers:
                self._idle.set()
