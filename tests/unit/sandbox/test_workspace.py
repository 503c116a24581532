from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from qlp.errors import SandboxError, UserInputError
from qlp.sandbox.bubblewrap import traversable
from qlp.sandbox.runtime import check_runtime, resolve_runtime
from qlp.sandbox.workspace import Identity, WorkspaceLease, check_workspace, sandbox_identity

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")


@root_only
def test_lease_hands_the_tree_over_and_back_without_following_links(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    (ws / "pkg").mkdir(parents=True)
    (ws / "pkg" / "a.py").write_text("x")
    outside = tmp_path / "outside.txt"
    outside.write_text("host")
    (ws / "link").symlink_to(outside)
    lease = WorkspaceLease(ws, Identity(65534, 65534, drop=True))
    lease.acquire()
    assert os.stat(ws / "pkg" / "a.py").st_uid == 65534
    assert os.lstat(ws / "link").st_uid == 65534
    assert os.stat(outside).st_uid == 0  # the link's target is untouched
    # The sandbox leaves a setuid file behind; it comes back owned by root without the bit.
    planted = ws / "planted"
    planted.write_text("x")
    os.chown(planted, 65534, 65534)
    planted.chmod(0o6755)
    lease.release()
    for p in (ws, ws / "pkg", ws / "pkg" / "a.py", planted):
        assert os.lstat(p).st_uid == 0
    assert not stat.S_IMODE(os.stat(planted).st_mode) & (stat.S_ISUID | stat.S_ISGID)
    assert os.stat(outside).st_uid == 0


def test_unprivileged_qlp_runs_code_as_itself() -> None:
    ident = sandbox_identity(65534, 65534)
    if os.geteuid() == 0:
        assert ident == Identity(65534, 65534, drop=True)
        with pytest.raises(SandboxError):
            sandbox_identity(0, 0)
    else:
        assert ident.uid == os.geteuid()
        assert not ident.drop


def test_workspace_must_be_a_real_directory(tmp_path: Path) -> None:
    with pytest.raises(UserInputError):
        check_workspace(tmp_path / "missing")
    (tmp_path / "link").symlink_to(tmp_path)
    with pytest.raises(UserInputError):
        check_workspace(tmp_path / "link")
    assert check_workspace(tmp_path) == tmp_path


def test_traversable(tmp_path: Path) -> None:
    closed = tmp_path / "closed"
    (closed / "ws").mkdir(parents=True)
    closed.chmod(0o700)
    assert not traversable(closed / "ws", 65534, 65534)
    closed.chmod(0o711)
    tmp_path.chmod(0o755)
    assert traversable(closed / "ws", 65534, 65534) == all(
        os.stat(p).st_mode & stat.S_IXOTH for p in (closed / "ws").parents
    )


def test_runtime_resolution_and_check(tmp_path: Path) -> None:
    assert resolve_runtime(tmp_path / "rt", tmp_path) == tmp_path / "rt"
    with pytest.raises(SandboxError, match="scripts/setup"):
        check_runtime(tmp_path / "rt", need_under_usr=True, other_uid=False)
    bad = tmp_path / "bad"
    (bad / "bin").mkdir(parents=True)
    (bad / "bin" / "python").symlink_to(tmp_path / "elsewhere-python")
    (tmp_path / "elsewhere-python").write_text("")
    with pytest.raises(SandboxError, match="cannot see"):
        check_runtime(bad, need_under_usr=True, other_uid=False)
