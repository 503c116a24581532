"""Scratch space under QLP_HOME/tmp that a crash cannot leave behind for good.

A process that needs temporary files (the service: capsules downloaded from storage for a
client, capsules uploaded to be verified) owns one folder, `held-<random>`, and holds an
exclusive `flock` on it for as long as it runs. The kernel drops that lock when the process
ends, however it ends, so the next process to open scratch space (`Scratch.open` sweeps
first) removes every `held-*` folder it can lock: those of dead owners, never a live one's.
The folder is made under a `.new-*` name and renamed once locked, so a sweep never sees it
unlocked; a `.new-*` folder older than an hour is a crash between those two steps.

Every process that writes under QLP_HOME/tmp does it inside such a folder: the service's
own (`Scratch`, opened and closed with the app) and, for everything else (a capsule being
packaged, one fetched by id for `qlp capsule verify`), `process_folder()`, opened on first use
and removed at exit. So a `qlp run` killed while packaging leaves a folder the next QLP
process removes.

Files from before this scheme (`download-*` / `verify-*` capsules and the store's
`.download-*.tmp` copies, left loose in QLP_HOME/tmp) are removed by the sweep too. Other
things in QLP_HOME/tmp are not touched.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

HELD = "held-"
NEW = ".new-"
# What the service left loose in QLP_HOME/tmp before scratch folders existed.
LEGACY_PREFIXES = ("download-", "verify-", ".download-", ".verify-")
NEW_GRACE_S = 3600.0


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def sweep(root: Path) -> list[str]:
    """Remove what dead owners left in `root`; returns the names removed."""
    removed: list[str] = []
    try:
        entries = list(os.scandir(root))
    except FileNotFoundError:
        return removed
    for entry in entries:
        name = entry.name
        if name.startswith(HELD) and entry.is_dir(follow_symlinks=False):
            try:
                fd = os.open(entry.path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
            except OSError:
                continue
            try:
                if not _try_lock(fd):
                    continue  # its owner is alive
                shutil.rmtree(entry.path, ignore_errors=True)
            finally:
                os.close(fd)
        elif name.startswith(NEW) and entry.is_dir(follow_symlinks=False):
            with contextlib.suppress(OSError):
                if time.time() - entry.stat(follow_symlinks=False).st_mtime < NEW_GRACE_S:
                    continue
            shutil.rmtree(entry.path, ignore_errors=True)
        elif name.startswith(LEGACY_PREFIXES) and entry.is_file(follow_symlinks=False):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.path)
        else:
            continue
        removed.append(name)
    return removed


class Scratch:
    """This process's scratch folder. Synchronous: call from async code in a thread."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._fd: int | None = None
        self.path: Path | None = None
        self.owner = os.getpid()  # a forked child opens its own

    def open(self) -> list[str]:
        """Sweep `root`, then make and lock this process's folder. Returns what was swept."""
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        removed = sweep(self.root)
        new = Path(tempfile.mkdtemp(prefix=NEW, dir=self.root))
        fd = os.open(new, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        fcntl.flock(fd, fcntl.LOCK_EX)  # nobody else can hold it: the name is new
        held = self.root / f"{HELD}{new.name.removeprefix(NEW)}"
        os.rename(new, held)
        self._fd, self.path = fd, held
        return removed

    def new_file(self, prefix: str, suffix: str = "") -> Path:
        """The path of a new empty private (0600) file in the folder."""
        if self.path is None:
            raise RuntimeError("scratch space is not open")
        fd, name = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=self.path)
        os.close(fd)
        return Path(name)

    def close(self) -> None:
        if self.owner != os.getpid():
            return  # a forked child's exit must not remove its parent's folder
        if self.path is not None:
            shutil.rmtree(self.path, ignore_errors=True)
            self.path = None
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


_opened: dict[Path, Scratch] = {}
_opening = threading.Lock()


def process_folder(root: Path) -> Path:
    """This process's scratch folder under `root`: opened (after a sweep) on first use,
    removed when the process exits."""
    root = Path(root)
    with _opening:
        found = _opened.get(root)
        if found is None or found.path is None or found.owner != os.getpid():
            found = Scratch(root)
            found.open()
            _opened[root] = found
            atexit.register(found.close)
        assert found.path is not None
        return found.path
