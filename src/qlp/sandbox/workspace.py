"""Who the sandboxed code runs as, and handing the workspace to it and back.

When QLP runs as root, sandboxed code runs as an unprivileged uid (65534 by default) so that
RLIMIT_NPROC binds and nothing in the sandbox is root on the host. That uid must be able to
write the workspace, so a session hands the tree over (lchown) on entry and takes it back on
exit. Both walks never follow symlinks, and happen while no sandboxed process is alive, so
code in the sandbox cannot steer them at a host path. On the way back setuid/setgid bits are
stripped. When QLP runs unprivileged, code runs as QLP's own uid and nothing is chowned.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from qlp.errors import SandboxError, UserInputError


@dataclass(frozen=True)
class Identity:
    uid: int
    gid: int
    drop: bool  # True: QLP is root and must switch to uid/gid before starting the sandbox


def sandbox_identity(uid: int, gid: int) -> Identity:
    if os.geteuid() == 0:
        if uid == 0 or gid == 0:
            raise SandboxError("QLP_SANDBOX_UID / QLP_SANDBOX_GID must not be 0 (root)")
        return Identity(uid, gid, drop=True)
    return Identity(os.geteuid(), os.getegid(), drop=False)


def check_workspace(workspace: Path) -> Path:
    path = Path(workspace)
    if not path.is_absolute():
        path = path.absolute()
    if path.is_symlink() or not path.is_dir():
        raise UserInputError(f"sandbox workspace must be an existing directory: {path}")
    return path


def _walk_chown(top: Path, uid: int, gid: int, strip_setid: bool) -> None:
    os.chown(top, uid, gid, follow_symlinks=False)
    for root, dirs, files in os.walk(top, followlinks=False):
        for name in dirs + files:
            path = os.path.join(root, name)
            try:
                st = os.lstat(path)
                if st.st_uid != uid or st.st_gid != gid:
                    os.chown(path, uid, gid, follow_symlinks=False)
                if strip_setid and stat.S_ISREG(st.st_mode):
                    mode = stat.S_IMODE(st.st_mode)
                    if mode & (stat.S_ISUID | stat.S_ISGID):
                        os.chmod(path, mode & ~(stat.S_ISUID | stat.S_ISGID))
            except FileNotFoundError:
                continue


class WorkspaceLease:
    """Gives the workspace tree to the sandbox identity; `release()` gives it back."""

    def __init__(self, workspace: Path, ident: Identity) -> None:
        self.workspace = workspace
        self.ident = ident
        st = os.stat(workspace)
        self.owner = (st.st_uid, st.st_gid)
        self.mode = stat.S_IMODE(st.st_mode)
        self.active = False

    def acquire(self) -> None:
        if not self.ident.drop:
            return
        _walk_chown(self.workspace, self.ident.uid, self.ident.gid, strip_setid=True)
        # The directory must be writable by its new owner whatever mode it was made with.
        os.chmod(self.workspace, self.mode | stat.S_IRWXU)
        self.active = True

    def release(self) -> None:
        if not self.active:
            return
        _walk_chown(self.workspace, self.owner[0], self.owner[1], strip_setid=True)
        os.chmod(self.workspace, self.mode)
        self.active = False
