"""`qlp review show` compares the workspace with the last capsule: a FIFO, socket or symlink
left in the workspace is named as not compared, never opened or waited on."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from qlp.cli.review import _project_files
from tests.fifo_guard import fifo_guard


def test_project_files_skip_and_name_what_is_not_a_regular_file(tmp_path: Path) -> None:
    (tmp_path / "src" / "__pycache__").mkdir(parents=True)
    (tmp_path / "src" / "a.py").write_text("A = 1\n")
    (tmp_path / "src" / "__pycache__" / "a.pyc").write_bytes(b"\0")
    (tmp_path / "README.md").write_text("# hi\n")
    os.mkfifo(tmp_path / "src" / "b.py")
    (tmp_path / "link.md").symlink_to(tmp_path / "README.md")
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.bind(str(tmp_path / "s.sock"))
        with fifo_guard(tmp_path / "src" / "b.py"):
            files, skipped = _project_files(tmp_path)
    finally:
        sock.close()
    assert files == {"README.md": b"# hi\n", "src/a.py": b"A = 1\n"}
    assert skipped == [
        "link.md is a symbolic link, not a regular file",
        "s.sock is a socket, not a regular file",
        "src/b.py is a FIFO, not a regular file",
    ]
