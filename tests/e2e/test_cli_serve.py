"""`qlp serve` failing to start says why in one line, without a traceback."""

from __future__ import annotations

import socket
from pathlib import Path

from tests.e2e.test_cli import qlp, qlp_env


def test_unreachable_database_is_one_line_exit_1(tmp_path: Path) -> None:
    env = qlp_env(tmp_path, "postgresql://qlp:secret@127.0.0.1:1/qlp")
    res = qlp("serve", "--port", "0", env=env, cwd=tmp_path, timeout=60)
    assert res.returncode == 1
    assert "cannot use the database" in res.stderr and "Traceback" not in res.stderr
    assert "secret" not in res.stderr


def test_taken_port_and_bad_port(tmp_path: Path, db_url: str) -> None:
    env = qlp_env(tmp_path, db_url)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        res = qlp("serve", "--port", str(port), env=env, cwd=tmp_path, timeout=60)
    assert res.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in res.stderr
    assert "Traceback" not in res.stderr
    bad = qlp("serve", "--port", "70000", env=env, cwd=tmp_path)
    assert bad.returncode == 2 and "--port" in bad.stderr
