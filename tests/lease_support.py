"""Helpers for the workspace-lease tests (tests/unit/sandbox/test_workspace_lease.py and
tests/attack/test_handback.py): folders another uid can reach, a child process running as
the sandbox uid, POSIX ACLs without setfacl, and walking a tree of any depth by descriptor."""

from __future__ import annotations

import contextlib
import os
import shutil
import struct
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

SANDBOX_UID = 65534
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC

# POSIX ACL xattr format (linux/posix_acl_xattr.h): u32 version 2, then (u16 tag, u16 perm,
# u32 id) entries, little-endian, sorted by tag.
ACL_USER_OBJ, ACL_USER, ACL_GROUP_OBJ, ACL_GROUP, ACL_MASK, ACL_OTHER = 1, 2, 4, 8, 0x10, 0x20
ACL_UNDEFINED_ID = 0xFFFFFFFF


@contextlib.contextmanager
def scratch(prefix: str = "qlp-lease-") -> Iterator[Path]:
    """A fresh folder under /tmp that every uid can traverse (tmp_path's parents may be
    0700), removed afterwards however deep the tree in it (`rm -rf`, not the recursive
    shutil.rmtree)."""
    base = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    try:
        base.chmod(0o755)
        yield base
    finally:
        subprocess.run(["rm", "-rf", "--one-file-system", str(base)], check=False)


def acl_blob(user: int, perms: int, *, other: int = 4) -> bytes:
    """An access/default ACL: owner rwx-as-given, `user` with `perms`, group r, mask as
    `perms`, other as given."""
    entries = [
        (ACL_USER_OBJ, 7, ACL_UNDEFINED_ID),
        (ACL_USER, perms, user),
        (ACL_GROUP_OBJ, 4, ACL_UNDEFINED_ID),
        (ACL_MASK, perms, ACL_UNDEFINED_ID),
        (ACL_OTHER, other, ACL_UNDEFINED_ID),
    ]
    return struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *e) for e in entries)


def grant_acl(path: Path, user: int, perms: int, *, default: bool = False) -> None:
    """Give `user` `perms` (rwx bits) on `path` by a POSIX ACL: with setfacl when installed,
    else by writing the xattr directly."""
    setfacl = shutil.which("setfacl")
    letters = "".join(c if perms & b else "-" for c, b in (("r", 4), ("w", 2), ("x", 1)))
    if setfacl is not None:
        args = [setfacl, *(["-d"] if default else []), "-m", f"u:{user}:{letters}", str(path)]
        subprocess.run(args, check=True)
        return
    name = "system.posix_acl_default" if default else "system.posix_acl_access"
    os.setxattr(path, name, acl_blob(user, perms), follow_symlinks=False)


def as_uid(fn: Callable[[], int], uid: int = SANDBOX_UID) -> int:
    """Run `fn` in a forked child with uid/gid `uid` and no supplementary groups; its
    return value (0..255) is the child's exit status, returned here."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 100
        try:
            os.setgroups([])
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)
            code = fn()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


WROTE, DENIED, OTHER_ERROR = 1, 0, 2


def _can_open(path: Path, flags: int, uid: int) -> bool:
    """Whether `uid` can open `path` with `flags` (False only on PermissionError)."""

    def attempt() -> int:
        try:
            fd = os.open(path, flags)
        except PermissionError:
            return DENIED
        except OSError:
            return OTHER_ERROR
        os.close(fd)
        return WROTE

    code = as_uid(attempt, uid)
    assert code in (WROTE, DENIED), f"probing {path} as uid {uid} failed unexpectedly ({code})"
    return code == WROTE


def can_write(path: Path, uid: int = SANDBOX_UID) -> bool:
    """Whether `uid` can open the file `path` for writing."""
    return _can_open(path, os.O_WRONLY | os.O_NOFOLLOW | os.O_NONBLOCK, uid)


def can_create_in(folder: Path, uid: int = SANDBOX_UID) -> bool:
    """Whether `uid` can create a file in `folder`."""
    return _can_open(folder / f"probe-{os.getpid()}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, uid)


def make_deep_tree(top: Path, levels: int) -> int:
    """`levels` nested folders below `top` (made by descriptor: no path gets long), a file at
    the bottom. Each level also has a leaf folder holding a file, which a depth-first walk
    that takes the last-listed folder first visits only on its way back up. Returns how many
    entries that makes."""
    fd = os.open(top, DIR_FLAGS)
    try:
        for _ in range(levels):
            os.mkdir("a", dir_fd=fd)
            os.mkdir("b", dir_fd=fd)
            leaf, nxt = [n for n in os.listdir(fd) if n in ("a", "b")]
            os.close(os.open(f"{leaf}/leaf.txt", os.O_CREAT | os.O_WRONLY, 0o644, dir_fd=fd))
            child = os.open(nxt, DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = child
        os.close(os.open("bottom.txt", os.O_CREAT | os.O_WRONLY, 0o644, dir_fd=fd))
    finally:
        os.close(fd)
    return levels * 3 + 1


def tree_owners(top: Path) -> tuple[int, dict[tuple[int, int], int]]:
    """How many entries there are below `top` (not counting it), and how many of them each
    (uid, gid) owns. GNU find walks any depth without following links."""
    out = subprocess.run(
        ["find", str(top), "-mindepth", "1", "-printf", "%U %G\\n"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    owners: dict[tuple[int, int], int] = {}
    for line in out.splitlines():
        uid, gid = (int(x) for x in line.split())
        owners[(uid, gid)] = owners.get((uid, gid), 0) + 1
    return sum(owners.values()), owners
