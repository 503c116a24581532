"""WorkspaceLease without a sandbox: the lock, deep trees, ACLs and xattrs, setid bits,
special files, and failures (root-only where the tree is chowned)."""

from __future__ import annotations

import fcntl
import os
import resource
import socket
import stat
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from qlp.errors import SandboxError, UserInputError
from qlp.sandbox import workspace as ws_mod
from qlp.sandbox.workspace import Identity, WorkspaceBusyError, WorkspaceLease
from tests.lease_support import (
    SANDBOX_UID,
    can_create_in,
    can_write,
    grant_acl,
    make_deep_tree,
    scratch,
    tree_owners,
)

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="handing a tree over needs root (chown)")
SANDBOX = Identity(SANDBOX_UID, SANDBOX_UID, drop=True)
SELF = Identity(os.geteuid(), os.getegid(), drop=False)
REPO = Path(__file__).resolve().parents[3]


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def _user_xattrs(path: Path) -> list[str]:
    return [
        n
        for n in os.listxattr(path, follow_symlinks=False)
        if n.startswith(("user.", "system.", "trusted.")) or n == "security.capability"
    ]


# -- one session per workspace ----------------------------------------------------------


def test_a_second_lease_is_refused_while_the_first_holds_it(tmp_path: Path) -> None:
    a = WorkspaceLease(tmp_path, SELF)
    a.acquire()
    assert a.held
    b = WorkspaceLease(tmp_path, SELF)
    with pytest.raises(WorkspaceBusyError) as refused:
        b.acquire()
    assert isinstance(refused.value, SandboxError)
    assert str(tmp_path) in str(refused.value)
    assert "already in use by another sandbox session" in str(refused.value)
    assert not b.held
    b.release()  # a refused lease has nothing to give back
    a.release()
    assert not a.held
    b.acquire()  # free again
    b.release()


def test_release_is_idempotent_and_a_lease_is_acquired_once(tmp_path: Path) -> None:
    lease = WorkspaceLease(tmp_path, SELF)
    lease.release()  # never acquired
    lease.acquire()
    with pytest.raises(SandboxError, match="already held"):
        lease.acquire()
    lease.release()
    lease.release()
    assert not lease.held


_OTHER_PROCESS = textwrap.dedent(
    """
    import os, sys
    from pathlib import Path
    from qlp.errors import SandboxError
    from qlp.sandbox.workspace import Identity, WorkspaceLease
    lease = WorkspaceLease(Path(sys.argv[1]), Identity(os.geteuid(), os.getegid(), drop=False))
    try:
        lease.acquire()
    except SandboxError as exc:
        print(exc)
        sys.exit(3)
    print("held", flush=True)
    if sys.argv[2] == "wait":
        sys.stdin.read()
    lease.release()
    """
)


def _other_process(workspace: Path, mode: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", _OTHER_PROCESS, str(workspace), mode],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


def test_a_lease_held_by_another_process_is_refused_and_vice_versa(tmp_path: Path) -> None:
    lease = WorkspaceLease(tmp_path, SELF)
    lease.acquire()
    try:
        out, _ = _other_process(tmp_path, "once").communicate(timeout=60)
    finally:
        lease.release()
    assert "already in use by another sandbox session" in out
    assert str(tmp_path) in out

    holder = _other_process(tmp_path, "wait")
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(WorkspaceBusyError):
            WorkspaceLease(tmp_path, SELF).acquire()
    finally:
        holder.kill()  # the lock goes with the holder's descriptor, however it ends
        holder.wait(timeout=60)
    lease.acquire()
    lease.release()


def test_the_lock_is_not_a_file_in_the_workspace(tmp_path: Path) -> None:
    lease = WorkspaceLease(tmp_path, SELF)
    lease.acquire()
    try:
        assert list(tmp_path.iterdir()) == []  # nothing the sandboxed code could delete
        fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)
    finally:
        lease.release()


def test_a_symlink_is_not_a_workspace(tmp_path: Path) -> None:
    target = tmp_path / "target"
    target.mkdir()
    (target / "f").write_text("x")
    link = tmp_path / "link"
    link.symlink_to(target)
    with pytest.raises(UserInputError):
        WorkspaceLease(link, SANDBOX).acquire()
    assert os.stat(target / "f").st_uid == os.geteuid()
    assert os.lstat(link).st_uid == os.geteuid()


@root_only
def test_overlapping_leases_leave_the_tree_to_its_owner() -> None:
    with scratch() as base:
        ws = base / "ws"
        (ws / "pkg").mkdir(parents=True)
        (ws / "pkg" / "a.py").write_text("x")
        a = WorkspaceLease(ws, SANDBOX)
        a.acquire()
        assert os.stat(ws / "pkg" / "a.py").st_uid == SANDBOX_UID
        b = WorkspaceLease(ws, SANDBOX)
        with pytest.raises(WorkspaceBusyError, match="already in use by another sandbox session"):
            b.acquire()
        a.release()
        b.release()  # refused: gives nothing back, and takes nothing
        assert tree_owners(ws)[1] == {(0, 0): 2}
        assert os.stat(ws).st_uid == 0
        b.acquire()  # after A, B can open
        assert tree_owners(ws)[1] == {(SANDBOX_UID, SANDBOX_UID): 2}
        b.release()
        assert tree_owners(ws)[1] == {(0, 0): 2}
        assert os.stat(ws).st_uid == 0


# -- depth ------------------------------------------------------------------------------


@root_only
@pytest.mark.slow
def test_a_1500_level_tree_is_handed_over_and_back_with_few_descriptors(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with scratch() as base:
        ws = base / "ws"
        ws.mkdir()
        total = make_deep_tree(ws, 1500)
        assert tree_owners(ws)[0] == total
        # Far fewer descriptors than levels: the walk must not keep one per level open.
        highest = max(int(n) for n in os.listdir("/proc/self/fd"))
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)

        def round_trip() -> tuple[int, dict[tuple[int, int], int]]:
            lease = WorkspaceLease(ws, SANDBOX)
            resource.setrlimit(resource.RLIMIT_NOFILE, (highest + 1 + 64, hard))
            try:
                lease.acquire()
                handed = tree_owners(ws)
                lease.release()
            finally:
                resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
                lease.release()
            return handed

        assert round_trip() == (total, {(SANDBOX_UID, SANDBOX_UID): total})
        assert tree_owners(ws) == (total, {(0, 0): total})
        # Again (the next session works), this time without stepping up by "..": folders
        # closed on the way down are opened again from the deepest open one.
        monkeypatch.setattr(ws_mod._Walk, "reopen_parent", lambda *_: None)
        assert round_trip() == (total, {(SANDBOX_UID, SANDBOX_UID): total})
        assert tree_owners(ws) == (total, {(0, 0): total})


# -- what the sandbox could leave behind -----------------------------------------------


@root_only
def test_acls_and_xattrs_set_during_the_lease_do_not_survive_it() -> None:
    with scratch() as base:
        ws = base / "ws"
        ws.mkdir(mode=0o755)
        (ws / "d").mkdir(mode=0o755)
        kept = ws / "kept.txt"
        kept.write_text("host data\n")
        kept.chmod(0o644)
        # A control, never leased: the same ACL on a root-owned 0644 file does let the
        # sandbox uid write it, so the check below means something.
        control = base / "control.txt"
        control.write_text("x")
        control.chmod(0o644)
        assert not can_write(control)
        grant_acl(control, SANDBOX_UID, 6)
        assert can_write(control)
        control_dir = base / "control-dir"
        control_dir.mkdir(mode=0o755)
        grant_acl(control_dir, SANDBOX_UID, 7)
        assert can_create_in(control_dir)

        lease = WorkspaceLease(ws, SANDBOX)
        lease.acquire()
        # What code running as the owner of every entry can do:
        grant_acl(kept, SANDBOX_UID, 6)
        grant_acl(ws, SANDBOX_UID, 7)
        grant_acl(ws / "d", SANDBOX_UID, 7)
        grant_acl(ws / "d", SANDBOX_UID, 7, default=True)
        os.setxattr(kept, "user.foo", b"bar")
        os.setxattr(ws / "d", "user.foo", b"bar")
        fifo = ws / "fifo"
        os.mkfifo(fifo)
        os.chown(fifo, SANDBOX_UID, SANDBOX_UID)
        grant_acl(fifo, SANDBOX_UID, 6)
        lease.release()

        for path in (ws, ws / "d", kept, fifo):
            assert os.lstat(path).st_uid == 0, path
            assert _user_xattrs(path) == [], path
        assert not can_write(kept)
        assert not can_create_in(ws)
        assert not can_create_in(ws / "d")
        assert kept.read_text() == "host data\n"


@root_only
def test_file_capabilities_are_stripped_on_the_way_back() -> None:
    with scratch() as base:
        ws = base / "ws"
        ws.mkdir()
        tool = ws / "tool"
        tool.write_text("#!/bin/sh\n")
        lease = WorkspaceLease(ws, SANDBOX)
        lease.acquire()
        # Root-owned already (so no chown would drop it): cap_net_raw, permitted+effective.
        os.chown(tool, 0, 0)
        tool.chmod(0o755)
        cap_net_raw = 1 << 13
        os.setxattr(
            tool, "security.capability", struct.pack("<IIIII", 0x02000001, cap_net_raw, 0, 0, 0)
        )
        lease.release()
        assert "security.capability" not in os.listxattr(tool)
        assert _mode(tool) == 0o755


@root_only
def test_setid_bits_are_stripped_other_bits_kept_and_the_top_mode_restored() -> None:
    with scratch() as base:
        ws = base / "ws"
        ws.mkdir()
        ws.chmod(0o2551)  # odd, and not writable by its owner: the lease must make it so
        given = ws / "given"
        given.write_text("x")
        given.chmod(0o4755)
        # Already the sandbox uid's: no chown, which would clear the bits by itself.
        left = ws / "left"
        left.write_text("x")
        os.chown(left, SANDBOX_UID, SANDBOX_UID)
        left.chmod(0o4755)
        lease = WorkspaceLease(ws, SANDBOX)
        lease.acquire()
        assert _mode(ws) == 0o2751
        assert _mode(given) == 0o755  # stripped on the way in as well
        assert _mode(left) == 0o755
        planted = ws / "planted"
        planted.write_text("x")
        os.chown(planted, SANDBOX_UID, SANDBOX_UID)
        planted.chmod(0o6775)
        # setgid without group-exec: a chown leaves it, the hand-back must not.
        sgid = ws / "sgid"
        sgid.write_text("x")
        os.chown(sgid, SANDBOX_UID, SANDBOX_UID)
        sgid.chmod(0o2644)
        given.chmod(0o4700)
        lease.release()
        assert _mode(ws) == 0o2551
        assert _mode(planted) == 0o775
        assert _mode(sgid) == 0o644
        assert _mode(given) == 0o700
        assert os.stat(planted).st_uid == 0


@root_only
def test_world_write_made_during_the_lease_does_not_survive_it() -> None:
    """Once the tree is back the sandbox uid is "other": world-write would keep its access."""
    with scratch() as base:
        ws = base / "ws"
        (ws / "sub").mkdir(parents=True)
        (ws / "sub" / "f").write_text("x")
        lease = WorkspaceLease(ws, SANDBOX)
        lease.acquire()
        (ws / "sub").chmod(0o777)
        (ws / "sub" / "f").chmod(0o666)
        lease.release()
        assert _mode(ws / "sub") == 0o775
        assert _mode(ws / "sub" / "f") == 0o664
        assert not can_write(ws / "sub" / "f")
        assert not can_create_in(ws / "sub")


@root_only
def test_a_tree_a_killed_session_left_to_the_sandbox_uid_goes_back_to_qlp() -> None:
    """QLP killed mid-session never handed the tree back; the next lease must not take the
    sandbox uid for its owner (the tree would stay the sandbox's for ever)."""
    with scratch() as base:
        ws = base / "ws"
        ws.mkdir()
        (ws / "f").write_text("x")
        for path in (ws, ws / "f"):
            os.chown(path, SANDBOX_UID, SANDBOX_UID)
        ws.chmod(0o777)
        lease = WorkspaceLease(ws, SANDBOX)
        lease.acquire()
        lease.release()
        assert tree_owners(ws)[1] == {(os.geteuid(), os.getegid()): 1}  # below the top
        assert (os.stat(ws).st_uid, os.stat(ws).st_gid) == (os.geteuid(), os.getegid())
        assert _mode(ws) == 0o775


@root_only
@pytest.mark.timeout(60)
def test_fifos_sockets_and_links_are_handed_over_without_being_opened_or_followed() -> None:
    with scratch() as base:
        ws = base / "ws"
        ws.mkdir()
        host_fifo = base / "host-fifo"
        os.mkfifo(host_fifo, 0o600)
        host_file = base / "host-file"
        host_file.write_text("secret")
        host_file.chmod(0o600)
        os.mkfifo(ws / "fifo")
        sock = socket.socket(socket.AF_UNIX)
        try:
            sock.bind(str(ws / "sock"))
        finally:
            sock.close()
        (ws / "to-fifo").symlink_to(host_fifo)
        (ws / "to-file").symlink_to(host_file)
        (ws / "dangling").symlink_to(base / "missing")
        lease = WorkspaceLease(ws, SANDBOX)
        lease.acquire()
        assert tree_owners(ws)[1] == {(SANDBOX_UID, SANDBOX_UID): 5}
        lease.release()
        assert tree_owners(ws)[1] == {(0, 0): 5}
        for host in (host_fifo, host_file):
            st = os.lstat(host)
            assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, 0o600)


# -- failures ---------------------------------------------------------------------------

FS_IOC_GETFLAGS = 0x80086601
FS_IOC_SETFLAGS = 0x40086602
FS_IMMUTABLE_FL = 0x10


def _set_immutable(path: Path, on: bool) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        (flags,) = struct.unpack("l", fcntl.ioctl(fd, FS_IOC_GETFLAGS, struct.pack("l", 0)))
        flags = flags | FS_IMMUTABLE_FL if on else flags & ~FS_IMMUTABLE_FL
        fcntl.ioctl(fd, FS_IOC_SETFLAGS, struct.pack("l", flags))
    finally:
        os.close(fd)


@root_only
def test_what_cannot_be_handed_is_named_after_the_rest_is_done() -> None:
    with scratch() as base:
        ws = base / "ws"
        for sub in ("a", "m", "z"):
            (ws / sub).mkdir(parents=True)
            (ws / sub / "f.txt").write_text("x")
        stuck = ws / "m" / "stuck.txt"
        stuck.write_text("x")
        try:
            _set_immutable(stuck, True)
        except OSError as exc:
            pytest.skip(f"cannot make a file immutable here: {exc}")
        try:
            # On the way in: nothing stays handed over, the lease is not taken.
            lease = WorkspaceLease(ws, SANDBOX)
            with pytest.raises(SandboxError, match="could not hand over") as failed:
                lease.acquire()
            assert "m/stuck.txt" in str(failed.value)
            assert not lease.held
            assert tree_owners(ws)[1] == {(0, 0): 7}
            _set_immutable(stuck, False)

            # On the way back: everything else is handed back, the lock is dropped.
            lease = WorkspaceLease(ws, SANDBOX)
            lease.acquire()
            _set_immutable(stuck, True)
            with pytest.raises(SandboxError, match="could not hand back") as failed:
                lease.release()
            assert "m/stuck.txt" in str(failed.value)
            assert not lease.held
            assert tree_owners(ws)[1] == {(0, 0): 6, (SANDBOX_UID, SANDBOX_UID): 1}
            assert os.stat(ws).st_uid == 0
            lease.release()  # nothing more to do
            _set_immutable(stuck, False)
            again = WorkspaceLease(ws, SANDBOX)
            again.acquire()
            again.release()
            assert tree_owners(ws)[1] == {(0, 0): 7}
        finally:
            _set_immutable(stuck, False)


@root_only
def test_entries_that_vanish_mid_walk_are_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    with scratch() as base:
        ws = base / "ws"
        for sub in ("gone-dir", "kept-dir"):
            (ws / sub).mkdir(parents=True)
            (ws / sub / "f.txt").write_text("x")
        (ws / "gone.txt").write_text("x")
        (ws / "kept.txt").write_text("x")
        lease = WorkspaceLease(ws, SANDBOX)
        lease.acquire()

        enter, fix_file = ws_mod._Walk.enter, ws_mod._Walk.fix_file

        def vanishing_enter(self: ws_mod._Walk, parent_fd: int, name: str) -> None:
            if name == "gone-dir":
                fd = os.open(name, os.O_RDONLY, dir_fd=parent_fd)
                os.unlink("f.txt", dir_fd=fd)
                os.close(fd)
                os.rmdir(name, dir_fd=parent_fd)
            enter(self, parent_fd, name)

        def vanishing_file(self: ws_mod._Walk, dir_fd: int, name: str, st: os.stat_result) -> bool:
            if name == "gone.txt":
                os.unlink(name, dir_fd=dir_fd)
            return fix_file(self, dir_fd, name, st)

        monkeypatch.setattr(ws_mod._Walk, "enter", vanishing_enter)
        monkeypatch.setattr(ws_mod._Walk, "fix_file", vanishing_file)
        lease.release()
        assert sorted(p.name for p in ws.iterdir()) == ["kept-dir", "kept.txt"]
        assert tree_owners(ws)[1] == {(0, 0): 3}
