"""Secret files QLP creates for itself under QLP_HOME (the capsule signing key, the JWT
keys): a private folder, a file created once and atomically, read only when private.

Folders are never loosened: missing ones are created 0700, an existing key folder owned by
QLP's user is narrowed to 0700 if group or others could enter it, and anything not ours
(another owner, a symlink, a file) is refused.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from pathlib import Path

from qlp.errors import ConfigError

MAX_KEY_FILE = 64 * 1024


def private_folder(folder: Path, error: type[ConfigError] = ConfigError) -> Path:
    missing: list[Path] = []
    probe = folder
    while not os.path.lexists(probe):
        missing.append(probe)
        probe = probe.parent
    for path in reversed(missing):
        with contextlib.suppress(FileExistsError):
            os.mkdir(path, 0o700)  # the umask can only narrow this
    info = folder.lstat()
    if not stat.S_ISDIR(info.st_mode):
        raise error(f"{folder} is not a folder (a symlink or a file is in its place)")
    if info.st_uid != os.geteuid():
        raise error(f"{folder} belongs to another user; refusing to keep a key there")
    if stat.S_IMODE(info.st_mode) & 0o077:
        os.chmod(folder, 0o700)  # ours, but too open: close it before a key goes in
    return folder


def create_once(path: Path, content: bytes) -> None:
    """Write `path` (mode 0600) unless it exists. Written to a temporary name, fsynced, then
    linked into place: of two processes creating it at once the first wins and the second
    keeps the first one's content (replacing it would void what was signed with it)."""
    folder = path.parent
    tmp = folder / f".{path.name}.{secrets.token_hex(6)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(content)
            fh.flush()
            os.fsync(fh.fileno())
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def read_private(path: Path, what: str, error: type[ConfigError] = ConfigError) -> bytes:
    """The content of a key file that is a regular file of ours readable by nobody else;
    `what` names it in errors ("the signing key")."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        raise error(f"cannot open {what} {path}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as fh:
        info = os.fstat(fh.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise error(f"{what} {path} is not a regular file")
        if info.st_uid != os.geteuid():
            raise error(f"{what} {path} belongs to another user")
        mode = stat.S_IMODE(info.st_mode)
        if mode & 0o077:
            raise error(
                f"{what} {path} can be read or written by group or others "
                f"(mode {mode:04o}); refusing to use it. Fix with: chmod 600 {path}"
            )
        return fh.read(MAX_KEY_FILE)
