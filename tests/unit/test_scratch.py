"""Scratch folders: a sweep removes a dead owner's folder and leftovers, never a live one's."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from qlp.scratch import NEW_GRACE_S, Scratch, process_folder, sweep


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


def _child(code: str, root: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", code, str(root)], stdout=subprocess.PIPE, text=True
    )


def test_a_process_killed_while_it_had_files_in_its_folder_leaves_nothing_for_good(
    tmp_path: Path,
) -> None:
    # A `qlp run` packaging a capsule, SIGKILLed: its folder stays until the next QLP
    # process opens its own.
    code = (
        "import sys, time; from pathlib import Path; from qlp.scratch import process_folder\n"
        "folder = process_folder(Path(sys.argv[1]))\n"
        "(folder / 'capsule.partial').write_bytes(b'x' * 1000)\n"
        "print(folder, flush=True); time.sleep(60)\n"
    )
    child = _child(code, tmp_path)
    assert child.stdout is not None
    left = Path(child.stdout.readline().strip())
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert (left / "capsule.partial").exists()
    mine = process_folder(tmp_path)
    assert not left.exists()
    assert [p.name for p in tmp_path.iterdir()] == [mine.name]
    assert process_folder(tmp_path) == mine  # one folder per process


def test_a_process_folder_is_removed_at_exit(tmp_path: Path) -> None:
    code = (
        "import sys; from pathlib import Path; from qlp.scratch import process_folder\n"
        "print(process_folder(Path(sys.argv[1])), flush=True)\n"
    )
    child = _child(code, tmp_path)
    out, _ = child.communicate(timeout=60)
    assert child.returncode == 0
    assert out.strip() and not Path(out.strip()).exists()
    assert list(tmp_path.iterdir()) == []
