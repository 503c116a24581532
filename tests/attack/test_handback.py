"""Attacks on handing the workspace back: steering the walk at host files with a symlink
swapped in under it, a tree too deep for a recursive walk, ACLs and xattrs that keep the
sandbox uid's access, and two sessions on one workspace.

The symlink race needs an attacker alive during the walk. The backends walk only after every
sandboxed process is gone, so the race is played by a host process running as the sandbox
uid (the second line of defence: the walk must be safe even then). The other attacks are
played by code in a real sandbox, on every backend.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import stat
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from qlp.errors import SandboxError
from qlp.sandbox.base import Sandbox
from qlp.sandbox.gvisor import GvisorSandbox
from qlp.sandbox.workspace import Identity, WorkspaceLease
from tests.lease_support import SANDBOX_UID, can_create_in, can_write, scratch, tree_owners

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="handing a tree over needs root (chown)")


def py(code: str) -> list[str]:
    return ["python", "-c", textwrap.dedent(code)]


# -- the symlink race -------------------------------------------------------------------

FILES = 200  # files in the swapped folder: each is a chance for a path-based walk to be led off
RENAME_EXCHANGE = 2
AT_FDCWD = -100


class Swapper:
    """A process of the sandbox uid that, while told to, keeps exchanging the folder `folder`
    with a symlink to `target` (atomically, with renameat2(RENAME_EXCHANGE) when the kernel
    has it: `folder` is always either the real folder or the symlink)."""

    def __init__(self, folder: Path, target: Path) -> None:
        self.folder = folder
        self.other = folder.with_name(folder.name + ".swap")
        self.target = target
        self.pid = 0
        self.ctl = self.ack = -1

    def start(self) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        exchange: Callable[..., int] | None = getattr(libc, "renameat2", None)
        a, b = os.fsencode(self.folder), os.fsencode(self.other)
        ctl_r, self.ctl = os.pipe()
        self.ack, ack_w = os.pipe()
        pid = os.fork()
        if pid:
            self.pid = pid
            os.close(ctl_r)
            os.close(ack_w)
            return
        code = 1  # pragma: no cover - the child, from here on
        try:
            os.close(self.ctl)
            os.close(self.ack)
            os.setgroups([])
            os.setresgid(SANDBOX_UID, SANDBOX_UID, SANDBOX_UID)
            os.setresuid(SANDBOX_UID, SANDBOX_UID, SANDBOX_UID)
            going = False
            while True:
                os.set_blocking(ctl_r, not going)  # wait for orders only while paused
                try:
                    cmd = os.read(ctl_r, 1)
                except BlockingIOError:
                    cmd = b"."
                if cmd in (b"", b"q"):
                    code = 0
                    break
                if cmd == b"g":
                    going = True
                elif cmd == b"p":
                    going = False
                    os.write(ack_w, b"p")
                    continue
                try:
                    if exchange is not None:
                        if not os.path.lexists(self.other):
                            os.symlink(self.target, self.other)
                        exchange(AT_FDCWD, a, AT_FDCWD, b, RENAME_EXCHANGE)
                    else:
                        os.rename(self.folder, self.other)
                        os.symlink(self.target, self.folder)
                        os.unlink(self.folder)
                        os.rename(self.other, self.folder)
                except OSError:
                    pass  # not ours (any more), or mid-way: try again
        finally:
            os._exit(code)

    def go(self) -> None:
        os.write(self.ctl, b"g")

    def pause(self) -> None:
        os.write(self.ctl, b"p")
        assert os.read(self.ack, 1) == b"p"

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            os.write(self.ctl, b"q")
        os.close(self.ctl)
        os.close(self.ack)
        os.waitpid(self.pid, 0)

    def restore(self) -> None:
        """Put the real folder back at its name (the walk may have frozen it swapped)."""
        if self.folder.is_symlink() and self.other.is_dir() and not self.other.is_symlink():
            self.folder.unlink()
            self.other.rename(self.folder)


def race(lease_for: Callable[[Path], WorkspaceLease], *, rounds: int, budget_s: float) -> str:
    """Lease and hand back a workspace `rounds` times (at most `budget_s` seconds) while a
    process of the sandbox uid swaps a folder in it for a symlink to a root-only host folder
    of root-owned 0600 files, which the sandbox also leaves as setuid files in the real
    folder. Returns what happened to the host files ("" if nothing)."""
    with scratch("qlp-handback-race-") as base:
        host = base / "host"
        host.mkdir(mode=0o700)
        ws = base / "ws"
        ws.mkdir(mode=0o755)
        # The sandbox made its folders world-writable, so renaming in them stays possible
        # after they are handed back (mode bits other than setid are kept).
        inner = ws / "p"
        inner.mkdir()
        inner.chmod(0o777)
        swapped = inner / "d"
        swapped.mkdir()
        swapped.chmod(0o777)
        for i in range(FILES):
            (host / f"f{i}").write_text("host secret")
            (host / f"f{i}").chmod(0o600)
            (swapped / f"f{i}").write_text("x")

        def damage() -> str:
            bad = []
            for path in [host, *(host / f"f{i}" for i in range(FILES))]:
                st = os.lstat(path)
                want = 0o700 if path == host else 0o600
                if (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) != (0, 0, want):
                    bad.append(f"{path.name}: uid {st.st_uid} mode {stat.S_IMODE(st.st_mode):o}")
            return ", ".join(bad)

        folder_fd = os.open(swapped, os.O_RDONLY | os.O_DIRECTORY)  # the real folder's inode
        attacker = Swapper(swapped, host)
        attacker.start()
        deadline = time.monotonic() + budget_s
        try:
            for _ in range(rounds):
                attacker.go()
                lease = lease_for(ws)
                with contextlib.suppress(SandboxError):  # the walk may say it was disturbed
                    lease.acquire()
                    for i in range(FILES):  # what the sandbox leaves: setuid files
                        with contextlib.suppress(OSError):
                            fd = os.open(f"f{i}", os.O_RDONLY | os.O_NOFOLLOW, dir_fd=folder_fd)
                            os.fchmod(fd, 0o4777)
                            os.close(fd)
                    lease.release()
                attacker.pause()
                found = damage()
                if found:
                    return found
                attacker.restore()
                if time.monotonic() > deadline:
                    break
        finally:
            attacker.stop()
            os.close(folder_fd)
    return ""


@root_only
@pytest.mark.slow
def test_a_symlink_swapped_in_during_the_walks_does_not_steer_them() -> None:
    # Against the old, path-based walk this changed a host file within a few dozen rounds in
    # every one of 30 runs (chown to the sandbox uid on the way in, chmod 0777 on the way
    # back); the whole run takes some 5 s.
    found = race(
        lambda ws: WorkspaceLease(ws, Identity(SANDBOX_UID, SANDBOX_UID, drop=True)),
        rounds=300,
        budget_s=15,
    )
    assert found == "", f"the hand-over was steered at host files: {found}"


# -- with a real sandbox ----------------------------------------------------------------


@pytest.fixture
def shared_ws() -> Iterator[Path]:
    """A workspace in a folder every uid can traverse (so that the sandbox uid's access to
    it is decided by the workspace's own modes and ACLs), removed however deep it gets."""
    with scratch("qlp-handback-") as base:
        ws = base / "ws"
        ws.mkdir(mode=0o755)
        yield ws


DEEP = """
    import os
    for _ in range(1500):
        os.mkdir("d")
        os.chdir("d")
    open("bottom.txt", "w").write("deep")
    print("made")
"""


@root_only
async def test_a_1500_level_tree_made_in_the_sandbox_is_handed_back(
    sandbox: Sandbox, shared_ws: Path
) -> None:
    async with sandbox.session(shared_ws) as s:
        result = await s.run(py(DEEP))
        assert result.ok, result.stderr
        assert result.stdout == "made\n"
    assert os.stat(shared_ws).st_uid == 0
    assert tree_owners(shared_ws) == (1501, {(0, 0): 1501})
    # And the next session works (and hands it back again).
    async with sandbox.session(shared_ws) as s:
        result = await s.run(["sh", "-c", "echo again > again.txt"])
        assert result.ok, result.stderr
    assert tree_owners(shared_ws) == (1502, {(0, 0): 1502})


ACLS = r"""
    import errno, json, os, struct
    def blob(perms):
        entries = [(1, 7, 0xFFFFFFFF), (2, perms, os.getuid()), (4, 4, 0xFFFFFFFF),
                   (0x10, perms, 0xFFFFFFFF), (0x20, 4, 0xFFFFFFFF)]
        return struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *e) for e in entries)
    os.mkdir("d")
    with open("kept.txt", "w") as f:
        f.write("mine")
    os.chmod("kept.txt", 0o644)
    done = {}
    for label, path, name, value in [
        ("file_acl", "kept.txt", "system.posix_acl_access", blob(6)),
        ("dir_acl", "d", "system.posix_acl_access", blob(7)),
        ("default_acl", "d", "system.posix_acl_default", blob(7)),
        ("top_acl", ".", "system.posix_acl_access", blob(7)),
        ("file_user", "kept.txt", "user.foo", b"bar"),
        ("dir_user", "d", "user.foo", b"bar"),
    ]:
        try:
            os.setxattr(path, name, value)
            done[label] = "ok"
        except OSError as exc:
            done[label] = errno.errorcode[exc.errno]
    print(json.dumps(done))
"""


@root_only
async def test_acls_and_xattrs_set_in_the_sandbox_do_not_survive_the_session(
    sandbox: Sandbox, shared_ws: Path
) -> None:
    async with sandbox.session(shared_ws) as s:
        result = await s.run(py(ACLS))
        assert result.ok, result.stderr
    planted = json.loads(result.stdout)
    if isinstance(sandbox, GvisorSandbox):
        # gVisor's file system has no xattrs for the sandbox to set: nothing to plant.
        assert set(planted.values()) <= {"ok", "ENOTSUP", "EOPNOTSUPP"}, planted
    else:
        assert set(planted.values()) == {"ok"}, planted
    kept = shared_ws / "kept.txt"
    for path in (shared_ws, shared_ws / "d", kept):
        st = os.lstat(path)
        assert (st.st_uid, st.st_gid) == (0, 0), path
        left = [
            n
            for n in os.listxattr(path, follow_symlinks=False)
            if n.startswith(("user.", "system."))
        ]
        assert left == [], (path, left)
    assert kept.read_text() == "mine"
    assert not can_write(kept)
    assert not can_create_in(shared_ws / "d")
    assert not can_create_in(shared_ws)


async def test_overlapping_sessions_on_one_workspace_are_refused(
    sandbox: Sandbox, shared_ws: Path
) -> None:
    owner = os.stat(shared_ws).st_uid
    async with sandbox.session(shared_ws) as a:
        with pytest.raises(SandboxError, match="already in use by another sandbox session") as no:
            async with sandbox.session(shared_ws):
                pytest.fail("a second session opened on a workspace in use")
        assert str(shared_ws) in str(no.value)
        result = await a.run(["sh", "-c", "mkdir made && echo a > made/a.txt"])
        assert result.ok, result.stderr  # A is unaffected by B's refusal
    assert tree_owners(shared_ws) == (2, {(owner, os.stat(shared_ws).st_gid): 2})
    assert os.stat(shared_ws).st_uid == owner
    async with sandbox.session(shared_ws) as b:  # after A, B opens
        result = await b.run(["sh", "-c", "cat made/a.txt && echo b > b.txt"])
        assert result.ok, result.stderr
        assert result.stdout == "a\n"
    assert os.stat(shared_ws / "b.txt").st_uid == owner
    assert os.stat(shared_ws).st_uid == owner
