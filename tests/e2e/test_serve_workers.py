"""`qlp serve --workers N` (issue 12) with real processes: a parent binds the port once and
supervises N API processes serving on it, each with its own worker; requests reach every
one of them; an intent completes; a process that dies is replaced; SIGTERM stops them all
(exit 0, no process left); the embedded PostgreSQL is started once and shared; a bad
--workers value is one line and exit 2."""

from __future__ import annotations

import os
import re
import signal
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from qlp.store.embedded import EmbeddedPostgres
from tests.api_support import API, ApiServer, qlp_workers, server_env
from tests.e2e.test_cli import qlp, qlp_env
from tests.fakes.llm_server import FakeLLMServer
from tests.support import dag_script

PASSWORD = "correct horse battery"
SERVING = re.compile(r"serving\s+(\d+) API processes on one socket \(pids ([\d, ]+)\)")
REPLACED = re.compile(r"API process (\d+) was killed by SIGKILL; process (\d+) serves in its place")
PROCESS_INFO = re.compile(r'^qlp_process_info\{pid="(\d+)"\} 1\.0$', re.MULTILINE)


@pytest.fixture
def llm() -> Iterator[FakeLLMServer]:
    with FakeLLMServer({"responses": dag_script({"QL-DEV-001": []}) * 5}) as server:
        yield server


def _wait_log(server: ApiServer, pattern: re.Pattern[str], timeout: float = 90) -> re.Match[str]:
    deadline = time.monotonic() + timeout
    while True:
        found = pattern.search(server.log())
        if found:
            return found
        assert server.proc is not None and server.proc.poll() is None, server.log()
        assert time.monotonic() < deadline, f"no {pattern.pattern!r} in:\n{server.log()}"
        time.sleep(0.05)


def _ready_pids(server: ApiServer) -> list[int]:
    found = _wait_log(server, SERVING)
    pids = [int(p) for p in found.group(2).split(", ")]
    assert int(found.group(1)) == len(pids)
    return pids


def _alive(pid: int) -> bool:
    """Running (a zombie or a reused-looking gone pid counts as not running)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _children_of(parent: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == parent:
                found.append(int(entry.name))
    return found


def _answering_pids(server: ApiServer, want: set[int], timeout: float = 30) -> set[int]:
    """The pids that answered /metrics (each request on a new connection, 8 at once) until
    every one of `want` has, or `timeout`."""

    def one(_: int) -> set[int]:
        body = httpx.get(f"{server.base}{API}/metrics", timeout=10).text
        return {int(p) for p in PROCESS_INFO.findall(body)}

    seen: set[int] = set()
    deadline = time.monotonic() + timeout
    with ThreadPoolExecutor(8) as pool:
        while not want <= seen and time.monotonic() < deadline:
            for pids in pool.map(one, range(16)):
                seen |= pids
    return seen


def _gone(pids: list[int], timeout: float = 30) -> list[int]:
    """Those of `pids` still running after `timeout`."""
    deadline = time.monotonic() + timeout
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    return [p for p in pids if _alive(p)]


def qlp_workers_alive(server: ApiServer) -> int:
    return int(qlp_workers(server)[1]["alive"])


@pytest.mark.slow
def test_two_processes_serve_run_an_intent_are_replaced_and_stop(
    tmp_path: Path, db_url: str, llm: FakeLLMServer
) -> None:
    server = ApiServer(
        server_env(tmp_path, db_url, llm.base_url), cwd=tmp_path, args=("--workers", "2")
    )
    server.create_user("wendy", PASSWORD)
    server.start()
    assert server.proc is not None
    try:
        pids = _ready_pids(server)
        assert len(set(pids)) == 2 and server.proc.pid not in pids
        assert set(pids) <= set(_children_of(server.proc.pid))
        assert "worker    in each API process, 2 intents at once (4 in all)" in server.log()
        assert _answering_pids(server, set(pids)) == set(pids)  # both serve the one port
        assert qlp_workers_alive(server) == 2  # each API process runs a worker

        token = server.token("wendy", PASSWORD)
        with server.client(token) as c:
            r = c.post("/intents", json={"text": "served by two processes"})
        assert r.status_code == 202, r.text
        final = server.wait_status(token, r.json()["id"], {"completed", "failed"})
        assert final["status"] == "completed", final

        # A process that dies is replaced; the port keeps answering meanwhile.
        os.kill(pids[0], signal.SIGKILL)
        replaced = _wait_log(server, REPLACED)
        assert int(replaced.group(1)) == pids[0]
        new = int(replaced.group(2))
        assert _answering_pids(server, {pids[1], new}) == {pids[1], new}
        children = _children_of(server.proc.pid)  # the API processes and any helper
        assert {pids[1], new} <= set(children)
    finally:
        code = server.stop()
    assert code == 0, server.log()
    # Stopped and reaped: no process outlives the parent.
    assert _gone([*pids, new, *children]) == []
    assert "Traceback" not in server.log()


@pytest.mark.slow
def test_the_embedded_database_is_started_once_and_outlives_no_one(
    tmp_path: Path, llm: FakeLLMServer
) -> None:
    env = server_env(tmp_path, "unused", llm.base_url)
    del env["QLP_DATABASE_URL"]  # zero configuration: the embedded PostgreSQL
    server = ApiServer(env, cwd=tmp_path, args=("--workers", "3"))
    server.start(timeout=180)
    assert server.proc is not None
    pg = EmbeddedPostgres(server.home / "postgres" / "data")
    try:
        pids = _ready_pids(server)
        assert len(pids) == 3
        assert "database  embedded PostgreSQL in" in server.log()
        assert _answering_pids(server, set(pids)) == set(pids)
        for _ in range(6):  # every process reaches the one database
            assert httpx.get(f"{server.base}{API}/readyz", timeout=10).status_code == 200
        assert pg.server_pid() is not None
        starts = pg.log_path.read_text().count("--- QLP: start on")
        assert starts == 1, pg.log_path.read_text()
        # The parent is killed outright: its API processes notice and stop by themselves,
        # and the last one to leave stops the database.
        server.proc.kill()
        server.proc.wait(30)
        assert _gone(pids, timeout=60) == [], server.log()
        deadline = time.monotonic() + 60
        while pg.server_pid() is not None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert pg.server_pid() is None
    finally:
        server.stop(signal.SIGKILL)
        pg.stop()


@pytest.mark.parametrize("value", ["0", "65", "-1", "two", ""])
def test_a_bad_workers_value_is_one_line_exit_2(tmp_path: Path, value: str) -> None:
    res = qlp(
        "serve", "--port", "0", f"--workers={value}", env=qlp_env(tmp_path, None), cwd=tmp_path
    )
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --workers: "), res.stderr
    assert "expected a number of API processes from 1 to 64, got" in lines[0]
    assert not (tmp_path / "qlp" / "postgres").exists()  # nothing started


def test_a_taken_port_fails_before_any_process_starts(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        res = qlp(
            "serve",
            "--port",
            str(port),
            "--workers",
            "4",
            env=qlp_env(tmp_path, None),
            cwd=tmp_path,
        )
    assert res.returncode == 1
    assert res.stderr.strip() == f"error: cannot listen on 127.0.0.1:{port}: Address already in use"
    assert not (tmp_path / "qlp" / "postgres").exists()


def test_an_unreachable_database_is_one_line_before_any_process_starts(tmp_path: Path) -> None:
    env = qlp_env(tmp_path, "postgresql://qlp:secret@127.0.0.1:1/qlp")
    res = qlp("serve", "--port", "0", "--workers", "2", env=env, cwd=tmp_path, timeout=60)
    assert res.returncode == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot use the database" in lines[0], res.stderr
    assert "secret" not in res.stderr


def test_a_process_that_cannot_start_is_the_one_error_line(tmp_path: Path, db_url: str) -> None:
    # The parent's database check passes; each API process then fails opening the service.
    env = qlp_env(tmp_path, db_url, QLP_STORAGE="azure", QLP_VALIDATE="false")
    res = qlp("serve", "--port", "0", "--workers", "2", env=env, cwd=tmp_path, timeout=120)
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: QLP_STORAGE_URL: "), res.stderr
    assert "Traceback" not in res.stderr and "listening on" not in res.stdout
