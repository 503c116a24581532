"""Scratch folders: a sweep removes a dead owner's folder and leftovers, never a live one's."""

from __future__ import annotations

import os
import time
from pathlib import Path

from qlp.scratch import NEW_GRACE_S, Scratch, sweep


def test_a_live_owners_folder_is_kept_and_a_dead_ones_removed(tmp_path: Path) -> None:
    live = Scratch(tmp_path)
    live.open()
    assert live.path is not None and live.path.name.startswith("held-")
    kept = live.new_file("download-", ".qlcapsule")
    dead = Scratch(tmp_path)
    dead.open()
    assert dead.path is not None
    (dead.path / "download-x.qlcapsule").write_bytes(b"x")
    gone = dead.path
    # A crash: the lock is released (the descriptor closes with the process), nothing else.
    assert dead._fd is not None
    os.close(dead._fd)
    dead._fd = None
    (tmp_path / "download-legacy.qlcapsule").write_bytes(b"x")
    (tmp_path / "qlp-capsule-cli").mkdir()  # someone else's
    young, old = tmp_path / ".new-young", tmp_path / ".new-old"
    young.mkdir()
    old.mkdir()
    past = time.time() - NEW_GRACE_S - 60
    os.utime(old, (past, past))

    removed = sweep(tmp_path)

    assert sorted(removed) == sorted([gone.name, "download-legacy.qlcapsule", ".new-old"])
    assert kept.exists() and not gone.exists() and young.exists()
    assert (tmp_path / "qlp-capsule-cli").exists()
    live.close()
    assert live.path is None and not kept.exists()
