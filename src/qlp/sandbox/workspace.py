"""Who the sandboxed code runs as, and handing the workspace to it and back.

When QLP runs as root, sandboxed code runs as an unprivileged uid (65534 by default) so that
RLIMIT_NPROC binds and nothing in the sandbox is root on the host. That uid must be able to
write the workspace, so a session leases the tree to it (`WorkspaceLease.acquire`) and takes
it back on exit (`WorkspaceLease.release`). When QLP runs unprivileged, code runs as QLP's
own uid and nothing is chowned. What a lease guarantees:

- One session per workspace at a time. `acquire` opens the workspace directory itself
  (O_NOFOLLOW: a symlink is refused) and takes an exclusive, non-blocking flock on that
  descriptor, held until `release`, whether QLP is root or not. A second session on the same
  workspace, from this process or any other, is refused with `WorkspaceBusyError` (a
  SandboxError) naming the path. The lock is on the directory, not on a file inside it
  that sandboxed code could delete, and it goes away with the descriptor (even if QLP is
  killed).
- The walks cannot be steered at host files, even by a process of the sandbox uid that is
  still alive and renaming things while they run (the backends walk only once every
  sandboxed process is gone; this is the second line). The tree is walked by file
  descriptor from the locked descriptor of the top directory: each folder is opened with
  O_NOFOLLOW|O_DIRECTORY relative to its parent's descriptor and its identity recorded;
  entries are changed only by a single-component name relative to that pinned descriptor
  (lchown, never following a symlink) or through a descriptor opened with O_NOFOLLOW and
  fstat-ed to be the very inode that was lstat-ed (chmod, xattrs). FIFOs, sockets and
  devices are never opened (only lchown-ed); a regular file is opened O_NONBLOCK|O_NOCTTY,
  so one swapped for a FIFO between lstat and open cannot block the walk either. On the way
  back the top directory gets its owner and mode back before anything below it, so that the
  sandbox uid can no longer rename in it (below it, only in folders it made world-writable).
- The walk is iterative and keeps a bounded number of descriptors open (a folder closed on
  the way down is opened again on the way up, as ".." of its child or else from its nearest
  open ancestor, and checked to be the inode first walked), so a tree of any depth is
  handed over and back. Entries that vanish mid-walk are skipped. An entry that cannot be
  handed over does not stop the walk: the rest is done, then one SandboxError names what
  failed. If handing over fails, what was handed over is taken back and the
  lease is not taken.
- A workspace found owned by the sandbox uid (a session whose QLP was killed never handed
  it back) goes back to QLP's own uid and gid, not to the sandbox uid.
- On the way back every entry loses the setuid/setgid bits (regular files; also on the way
  in), the world-write bit (the sandbox uid is "other" then) and every extended attribute
  the sandbox uid could have set to keep access to it:
  POSIX ACLs (system.posix_acl_access / _default), user.*, trusted.*, security.capability.
  Other security.* attributes (LSM labels, which an unprivileged uid cannot set) are kept.
  The top directory's mode is restored exactly; other entries keep their other mode bits.
- `release` is idempotent, and always drops the lock, even if the walk back fails.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import fcntl
import functools
import os
import stat
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from qlp.errors import SandboxError, UserInputError

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
# Regular files only (lstat-ed first): O_NONBLOCK and O_NOCTTY in case it was swapped for a
# FIFO or a terminal in between; the fstat check then refuses it.
FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
SETID = stat.S_ISUID | stat.S_ISGID
# Folders kept open at once below the top one; those further up are re-opened on the way up.
MAX_OPEN_DIRS = 32
# How often an entry that keeps changing kind under the walk is looked at again.
ATTEMPTS = 3
# Shown in an error message at most; the count says how many more.
SHOWN_FAILURES = 5
SHOWN_PATH = 160  # characters of a path in an error message (its end)
_PROC_FD = os.path.isdir("/proc/self/fd")


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


class WorkspaceBusyError(SandboxError):
    """Another sandbox session (of this process or another) holds the workspace."""

    def __init__(self, workspace: Path) -> None:
        super().__init__(
            f"workspace {workspace} is already in use by another sandbox session; "
            "only one session at a time may use a workspace"
        )
        self.workspace = workspace


def _stripped(name: str) -> bool:
    """Whether the hand-back removes the extended attribute `name`: every one the sandbox
    uid could have set, as owner or with write access (POSIX ACLs and other system.*,
    user.*, namespaced file capabilities), and trusted.*, which it could not but which no
    workspace needs. LSM labels (the rest of security.*) are the kernel's and stay."""
    if name.startswith(("user.", "system.", "trusted.")):
        return True
    return name == "security.capability"


@dataclass(eq=False)
class _Frame:
    """A folder on the walk's stack: its name in its parent, which inode it was when it was
    first opened, its descriptor while open, and the subfolders still to visit."""

    name: str
    dev: int
    ino: int
    fd: int | None
    subdirs: list[str] = field(default_factory=list)


class _Walk:
    """One walk of the tree below (and including) `top_fd`, giving every entry to uid:gid."""

    def __init__(
        self, top_fd: int, uid: int, gid: int, *, top_mode: int, strip_xattrs: bool
    ) -> None:
        self.top_fd = top_fd
        self.top_mode = top_mode
        self.uid = uid
        self.gid = gid
        self.strip_xattrs = strip_xattrs
        self.failures: list[str] = []
        self.stack: list[_Frame] = []
        # The frames whose descriptor is open, shallowest first (never the top folder's).
        self.open: collections.deque[_Frame] = collections.deque()

    # -- bookkeeping -------------------------------------------------------------------
    def fail(self, where: str, what: str | OSError) -> None:
        if isinstance(what, OSError):
            what = what.strerror or str(what)
        if len(where) > SHOWN_PATH:
            where = "..." + where[-SHOWN_PATH:]
        self.failures.append(f"{where}: {what}")

    def where(self, depth: int, name: str | None = None) -> str:
        """The path, relative to the workspace, of stack[depth] (or of `name` in it)."""
        parts = [f.name for f in self.stack[1 : depth + 1]]
        if name is not None:
            parts.append(name)
        return "/".join(parts) or "."

    def keep_open(self, frame: _Frame) -> None:
        self.open.append(frame)
        while len(self.open) > MAX_OPEN_DIRS:
            self.close(self.open.popleft())

    def close(self, frame: _Frame) -> None:
        if frame.fd is not None and frame.fd != self.top_fd:
            os.close(frame.fd)
        frame.fd = None

    def pop(self) -> None:
        frame = self.stack.pop()
        if frame in self.open:
            self.open.remove(frame)
        parent = self.stack[-1] if self.stack else None
        if parent is not None and parent.fd is None and frame.fd is not None:
            self.reopen_parent(frame.fd, parent)
        self.close(frame)

    def reopen_parent(self, fd: int, parent: _Frame) -> None:
        """On the way up, open the closed `parent` again as ".." of its child `fd`: one
        step, if that is still the inode first walked (else `top_frame_fd` does it)."""
        try:
            up = os.open("..", DIR_FLAGS, dir_fd=fd)
        except OSError:
            return
        st = os.fstat(up)
        if (st.st_dev, st.st_ino) != (parent.dev, parent.ino):
            os.close(up)
            return
        parent.fd = up
        self.keep_open(parent)

    def top_frame_fd(self) -> int | None:
        """The descriptor of the folder on top of the stack, opened again if it had to be
        closed: from its deepest open ancestor (the top folder at worst) down, one component
        at a time, each checked to be the inode first walked."""
        last = len(self.stack) - 1
        if self.stack[last].fd is not None:
            return self.stack[last].fd
        start = last
        while self.stack[start - 1].fd is None:
            start -= 1
        for depth in range(start, last + 1):
            frame, parent_fd = self.stack[depth], self.stack[depth - 1].fd
            assert parent_fd is not None
            try:
                fd = os.open(frame.name, DIR_FLAGS, dir_fd=parent_fd)
            except OSError as exc:
                self.fail(self.where(depth), f"could not be opened again: {exc.strerror}")
                return None
            st = os.fstat(fd)
            if (st.st_dev, st.st_ino) != (frame.dev, frame.ino):
                os.close(fd)
                self.fail(self.where(depth), "was replaced while being walked")
                return None
            frame.fd = fd
            self.keep_open(frame)
        return self.stack[last].fd

    # -- the walk ----------------------------------------------------------------------
    def run(self) -> list[str]:
        st = os.fstat(self.top_fd)
        top = _Frame(".", st.st_dev, st.st_ino, self.top_fd)
        self.fix_dir(top, st, lambda: ".", mode=self.top_mode)
        self.stack.append(top)
        try:
            while self.stack:
                frame = self.stack[-1]
                if not frame.subdirs:
                    self.pop()
                    continue
                parent_fd = self.top_frame_fd()
                if parent_fd is None:
                    where = self.where(len(self.stack) - 1)
                    self.fail(where, f"{len(frame.subdirs)} of its folders were not walked")
                    self.pop()
                    continue
                self.enter(parent_fd, frame.subdirs.pop())
        finally:
            while self.stack:
                self.pop()
        return self.failures

    def enter(self, parent_fd: int, name: str) -> None:
        """Open the subfolder `name` of the folder on top of the stack, fix it, push it."""
        depth = len(self.stack) - 1
        for _ in range(ATTEMPTS):
            try:
                fd = os.open(name, DIR_FLAGS, dir_fd=parent_fd)
            except FileNotFoundError:
                return
            except OSError as exc:
                if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                    self.fail(self.where(depth, name), exc)
                    return
                # No longer a folder (a symlink now, say): hand over what stands there now.
                if not self.fix_entry(parent_fd, name, lambda: self.where(depth, name)):
                    return
                continue
            try:
                st = os.fstat(fd)
                frame = _Frame(name, st.st_dev, st.st_ino, fd)
                self.fix_dir(frame, st, lambda: self.where(depth, name))
            except BaseException:
                os.close(fd)
                raise
            self.stack.append(frame)
            self.keep_open(frame)
            return
        self.fail(self.where(depth, name), "kept changing while being walked")

    def fix_dir(
        self,
        frame: _Frame,
        st: os.stat_result,
        where: Callable[[], str],
        *,
        mode: int | None = None,
    ) -> None:
        """Give the folder `frame` (open, fstat-ed as `st`) to uid:gid, and every entry in
        it but its subfolders, which it notes for the walk. `where()` is its path. `mode`:
        set the folder's mode to that (right after the chown, before its entries)."""
        assert frame.fd is not None
        fd = frame.fd
        try:
            if (st.st_uid, st.st_gid) != (self.uid, self.gid):
                os.fchown(fd, self.uid, self.gid)
            if mode is not None:
                os.fchmod(fd, mode)
            elif self.strip_xattrs and st.st_mode & stat.S_IWOTH:
                # The sandbox uid is "other" once the tree is back: world-write would keep
                # its access (and any host user's) as an ACL would.
                os.fchmod(fd, stat.S_IMODE(st.st_mode) & ~stat.S_IWOTH)
            if self.strip_xattrs:
                self.remove_xattrs(fd)
        except OSError as exc:
            self.fail(where(), exc)
        try:
            with os.scandir(fd) as entries:
                for entry in entries:
                    if entry.is_dir(follow_symlinks=False):
                        frame.subdirs.append(entry.name)
                    elif self.fix_entry(
                        fd, entry.name, functools.partial(_join, where, entry.name)
                    ):
                        frame.subdirs.append(entry.name)  # a folder by now
        except OSError as exc:
            self.fail(where(), f"could not be listed: {exc.strerror}")

    def fix_entry(self, dir_fd: int, name: str, where: Callable[[], str]) -> bool:
        """Give the entry `name` of the folder `dir_fd` to uid:gid, unless it is a folder:
        then return True (the caller walks it). Vanished entries are skipped; failures are
        recorded (`where` says the entry's path, only then)."""
        try:
            for _ in range(ATTEMPTS):
                st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
                if stat.S_ISDIR(st.st_mode):
                    return True
                if not stat.S_ISREG(st.st_mode):
                    # Symlink, FIFO, socket, device: never opened, never followed.
                    if (st.st_uid, st.st_gid) != (self.uid, self.gid):
                        os.chown(name, self.uid, self.gid, dir_fd=dir_fd, follow_symlinks=False)
                    if self.strip_xattrs and _PROC_FD:
                        # The pinned folder's descriptor, then one component, not followed.
                        self.remove_xattrs(f"/proc/self/fd/{dir_fd}/{name}", follow=False)
                    return False
                if self.fix_file(dir_fd, name, st):
                    return False
            self.fail(where(), "kept changing while being walked")
        except FileNotFoundError:
            pass
        except OSError as exc:
            self.fail(where(), exc)
        return False

    def fix_file(self, dir_fd: int, name: str, st: os.stat_result) -> bool:
        """Fix the regular file `name`, lstat-ed as `st`, through a descriptor checked to be
        that inode. False if what opens there now is something else."""
        if (
            not self.strip_xattrs
            and (st.st_uid, st.st_gid) == (self.uid, self.gid)
            and not st.st_mode & SETID
        ):
            return True  # nothing to do (on the way in, where xattrs stay): not even open it
        try:
            fd = os.open(name, FILE_FLAGS, dir_fd=dir_fd)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENXIO, errno.ENOTDIR, errno.EISDIR):
                return False  # swapped for a symlink, a socket...: look again
            raise
        try:
            now = os.fstat(fd)
            if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
                return False
            if (now.st_uid, now.st_gid) != (self.uid, self.gid):
                os.fchown(fd, self.uid, self.gid)
            if self.strip_xattrs:
                self.remove_xattrs(fd)
            # After the chown: the kernel may have cleared bits, and nobody else can set them.
            # On the way back world-write goes too (see fix_dir).
            mode = stat.S_IMODE(os.fstat(fd).st_mode)
            drop = SETID | (stat.S_IWOTH if self.strip_xattrs else 0)
            if mode & drop:
                os.fchmod(fd, mode & ~drop)
        finally:
            os.close(fd)
        return True

    @staticmethod
    def remove_xattrs(target: int | str, *, follow: bool = True) -> None:
        try:
            names = os.listxattr(target, follow_symlinks=follow)
        except OSError as exc:
            if exc.errno == errno.ENOTSUP:
                return
            raise
        for attr in names:
            if not _stripped(attr):
                continue
            try:
                os.removexattr(target, attr, follow_symlinks=follow)
            except OSError as exc:
                if exc.errno != errno.ENODATA:
                    raise


def _join(where: Callable[[], str], name: str) -> str:
    base = where()
    return name if base == "." else f"{base}/{name}"


def _hand_over(top_fd: int, uid: int, gid: int, *, top_mode: int, strip_xattrs: bool) -> list[str]:
    """Give the tree below (and including) `top_fd` to uid:gid, the top folder with mode
    `top_mode`, first (so that whoever owned it can no longer rename in it, unless the mode
    lets anyone); return what failed, one entry each."""
    walk = _Walk(top_fd, uid, gid, top_mode=top_mode, strip_xattrs=strip_xattrs)
    return walk.run()


def _failed(action: str, workspace: Path, failures: list[str]) -> SandboxError:
    shown = "; ".join(failures[:SHOWN_FAILURES])
    more = len(failures) - SHOWN_FAILURES
    if more > 0:
        shown += f"; and {more} more"
    return SandboxError(f"could not {action} workspace {workspace}: {shown}")


class WorkspaceLease:
    """Holds the workspace for one sandbox session: `acquire()` locks it and gives the tree
    to the sandbox identity; `release()` gives it back and unlocks it. Used once; thread-safe."""

    def __init__(self, workspace: Path, ident: Identity) -> None:
        self.workspace = workspace
        self.ident = ident
        self.owner: tuple[int, int] | None = None  # read under the lock, when acquired
        self.mode: int | None = None
        self.active = False  # the tree is (possibly partly) handed to the sandbox identity
        self._fd: int | None = None  # the locked descriptor of the workspace directory
        self._mutex = threading.RLock()

    @property
    def held(self) -> bool:
        """Whether this lease holds the workspace's lock (between acquire and release)."""
        return self._fd is not None

    def _lock(self) -> int:
        try:
            fd = os.open(self.workspace, DIR_FLAGS)
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
                raise UserInputError(
                    f"sandbox workspace must be an existing directory: {self.workspace}"
                ) from None
            raise SandboxError(f"cannot open workspace {self.workspace}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise WorkspaceBusyError(self.workspace) from None
        except BaseException:
            os.close(fd)
            raise
        return fd

    def acquire(self) -> None:
        with self._mutex:
            if self._fd is not None:
                raise SandboxError(f"this lease on workspace {self.workspace} is already held")
            fd = self._lock()
            st = os.fstat(fd)
            self.owner = (st.st_uid, st.st_gid)
            self.mode = stat.S_IMODE(st.st_mode)
            if self.ident.drop and st.st_uid == self.ident.uid:
                # Only a session that never handed it back (QLP killed mid-session) leaves
                # the workspace owned by the sandbox uid. QLP made it: QLP gets it back.
                self.owner = (os.geteuid(), os.getegid())
                self.mode &= ~stat.S_IWOTH
            self._fd = fd
            if not self.ident.drop:
                return
            self.active = True
            try:
                # The directory must be writable by its new owner whatever mode it was made
                # with.
                failures = _hand_over(
                    fd,
                    self.ident.uid,
                    self.ident.gid,
                    top_mode=self.mode | stat.S_IRWXU,
                    strip_xattrs=False,
                )
            except BaseException:
                self._undo()
                raise
            if failures:
                self._undo()
                raise _failed("hand over", self.workspace, failures)

    def _undo(self) -> None:
        """Take back what a failed acquire handed over; its own error is the one to see."""
        with contextlib.suppress(SandboxError):
            self.release()

    def release(self) -> None:
        failures: list[str] = []
        with self._mutex:
            fd, self._fd = self._fd, None
            if fd is None:
                return
            try:
                if self.active:
                    assert self.owner is not None
                    assert self.mode is not None
                    failures = _hand_over(fd, *self.owner, top_mode=self.mode, strip_xattrs=True)
            finally:
                self.active = False
                os.close(fd)  # drops the lock
        if failures:
            raise _failed("hand back", self.workspace, failures)
