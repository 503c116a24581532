"""Several API processes on one port (`qlp serve --workers N`; docs/ARCHITECTURE.md
"Several API processes"): the parent holds the socket and the embedded PostgreSQL and
supervises N spawned processes, each running `server.serve_on` on the inherited socket."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import signal
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from types import FrameType
from typing import Any, Final

from qlp.api.server import Listening, describe, serve_on
from qlp.config import Settings
from qlp.engine.wiring import open_runtime
from qlp.errors import QLPError
from qlp.store.embedded import EmbeddedPostgres

_log = logging.getLogger(__name__)

# More unexpected exits than this within RESTART_WINDOW_S and the server stops (a crash loop
# would otherwise restart forever).
MAX_RESTARTS: Final = 5
RESTART_WINDOW_S: Final = 60.0
# A stopping process gets QLP_SERVER_SHUTDOWN_GRACE_S for open requests plus this for
# interrupting its intents and closing; then it is killed.
STOP_MARGIN_S: Final = 30.0


@dataclass(eq=False)
class _Child:
    process: BaseProcess
    conn: Connection
    ready: bool = False

    @property
    def pid(self) -> int:
        return self.process.pid or 0


class Supervisor:
    """The parent of `qlp serve --workers N`: it holds the socket (bound once, before
    anything starts) and the embedded PostgreSQL, spawns N API processes that serve on the
    socket, says ready once all are, replaces one that exits unexpectedly (at most
    MAX_RESTARTS within RESTART_WINDOW_S, else it stops them all and fails), and on
    SIGINT/SIGTERM stops them all gracefully."""

    def __init__(
        self,
        settings: Settings,
        sock: socket.socket,
        count: int,
        worker: bool,
        on_ready: Callable[[Listening], None] | None,
        on_notice: Callable[[str], None] | None,
    ) -> None:
        self.settings = settings
        self.sock = sock
        self.count = count
        self.worker = worker
        self.on_ready = on_ready
        self.on_notice = on_notice
        # spawn, not fork: this process has threads by now (the embedded PostgreSQL's
        # reaper, asyncio's executor), and each API process wants a fresh interpreter.
        self._ctx = multiprocessing.get_context("spawn")
        self._children: list[_Child] = []
        self._signals = 0
        self._exits: deque[float] = deque()
        self._wake_r, self._wake_w = socket.socketpair()

    def run(self) -> None:
        old_wakeup = -1
        old_handlers: dict[int, Any] = {}
        embedded = None
        try:
            # A signal from here on (also while the database starts) stops the server
            # gracefully, as uvicorn does for one process.
            self._wake_w.setblocking(False)
            old_wakeup = signal.set_wakeup_fd(self._wake_w.fileno())
            for sig in (signal.SIGINT, signal.SIGTERM):
                old_handlers[sig] = signal.signal(sig, self._signalled)
            embedded = self._prepare()
            if not self._signals:
                self._serve()
        finally:
            for signum, handler in old_handlers.items():
                signal.signal(signum, handler)
            signal.set_wakeup_fd(old_wakeup)
            self._wake_r.close()
            self._wake_w.close()
            if embedded is not None:
                embedded.release()  # the last user stops it

    def _prepare(self) -> EmbeddedPostgres | None:
        """Start (or join) the embedded PostgreSQL and migrate, once, before any API process
        starts. This process stays a user of the embedded server until the end, so it keeps
        running while API processes come and go; each of them joins it as a user too."""
        embedded = None
        if self.settings.database_url is None:
            embedded = EmbeddedPostgres(self.settings.home / "postgres" / "data")
            embedded.acquire()
        try:
            asyncio.run(_migrate(self.settings))
        except BaseException:
            if embedded is not None:
                embedded.release()
            raise
        return embedded

    def _serve(self) -> None:
        failure: BaseException | None = None
        try:
            self._await_ready([self._spawn() for _ in range(self.count)])
            if self._signals:
                return
            if self.on_ready is not None:
                pids = [c.pid for c in self._children]
                address = self.sock.getsockname()
                self.on_ready(describe(self.settings, address, worker=self.worker, pids=pids))
            self._watch()
        except BaseException as exc:
            failure = exc
            raise
        finally:
            killed = self._stop_all()
            if killed and failure is None:
                raise QLPError(
                    f"API process{'es' if len(killed) > 1 else ''} "
                    f"{', '.join(map(str, killed))} did not stop within "
                    f"{self._stop_budget():g} s and {'were' if len(killed) > 1 else 'was'} "
                    "killed; their intents resume on the next start"
                )

    def _signalled(self, signum: int, frame: FrameType | None) -> None:
        self._signals += 1

    def _drain(self) -> None:
        with contextlib.suppress(BlockingIOError):
            self._wake_r.setblocking(False)
            while self._wake_r.recv(64):
                pass

    def _spawn(self) -> _Child:
        mine, theirs = self._ctx.Pipe()
        process = self._ctx.Process(
            target=_child,
            args=(self.settings, self.sock, self.worker, theirs),
            name="qlp-serve",
        )
        process.start()
        theirs.close()  # the child's end: it sees EOF when this process is gone
        child = _Child(process, mine)
        self._children.append(child)
        return child

    def _await_ready(self, starting: list[_Child]) -> None:
        """Until each of `starting` says it serves; a start-up failure of any (its one line)
        raises. Returns early on a signal."""
        waiting = list(starting)
        while waiting and not self._signals:
            objects: list[Any] = [self._wake_r]
            for c in waiting:
                objects += [c.conn, c.process.sentinel]
            wait(objects)
            self._drain()
            for c in list(waiting):
                message = None
                if c.conn.poll():
                    with contextlib.suppress(EOFError, OSError):
                        message = c.conn.recv()
                if message is not None and message[0] == "ready":
                    c.ready = True
                    waiting.remove(c)
                elif message is not None and message[0] == "failed":
                    error = QLPError(str(message[1]))
                    error.exit_code = int(message[2])
                    raise error
                elif not c.process.is_alive():
                    raise QLPError(
                        f"API process {c.pid} {_how(c.process.exitcode)} while starting; "
                        "see the lines above"
                    )

    def _watch(self) -> None:
        """Until a signal: replace an API process that exits."""
        while not self._signals:
            wait([self._wake_r, *(c.process.sentinel for c in self._children)])
            self._drain()
            if self._signals:
                return
            for c in list(self._children):
                if c.process.is_alive():
                    continue
                c.process.join()
                c.conn.close()
                self._children.remove(c)
                self._replace(c)
                if self._signals:
                    return

    def _replace(self, gone: _Child) -> None:
        how = _how(gone.process.exitcode)
        now = time.monotonic()
        self._exits.append(now)
        while self._exits and now - self._exits[0] > RESTART_WINDOW_S:
            self._exits.popleft()
        if len(self._exits) > MAX_RESTARTS:
            raise QLPError(
                f"API process {gone.pid} {how}: {len(self._exits)} API processes exited "
                f"within {RESTART_WINDOW_S:g} s, so the server stopped; see the lines above"
            )
        new = self._spawn()
        try:
            self._await_ready([new])
        except QLPError as exc:
            exc.message = f"API process {gone.pid} {how} and its replacement failed: {exc}"
            exc.args = (exc.message,)
            raise
        if new.ready:
            self._notice(f"API process {gone.pid} {how}; process {new.pid} serves in its place")

    def _notice(self, message: str) -> None:
        if self.on_notice is not None:
            self.on_notice(message)
        else:
            _log.warning("%s", message)

    def _stop_budget(self) -> float:
        return self.settings.server_shutdown_grace_s + STOP_MARGIN_S

    def _stop_all(self) -> list[int]:
        """SIGTERM to every API process (again on each further signal: uvicorn then stops
        without waiting for open requests); kill those still running after the budget.
        Returns the pids killed."""
        alive = [c for c in self._children if c.process.is_alive()]
        forwarded = self._signals
        for c in alive:
            _terminate(c.pid)
        deadline = time.monotonic() + self._stop_budget()
        while alive and time.monotonic() < deadline:
            wait(
                [self._wake_r, *(c.process.sentinel for c in alive)],
                timeout=deadline - time.monotonic(),
            )
            self._drain()
            alive = [c for c in alive if c.process.is_alive()]
            if self._signals > forwarded:
                forwarded = self._signals
                for c in alive:
                    _terminate(c.pid)
        for c in alive:
            c.process.kill()
        for c in self._children:
            c.process.join()
            c.conn.close()
        self._children.clear()
        return [c.pid for c in alive]


def _terminate(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)


def _how(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        return f"was killed by {name}"
    return f"exited with code {exitcode}"


async def _migrate(settings: Settings) -> None:
    """Connect once, migrating the schema (under the migration lock), before API processes
    open their own connections."""
    async with open_runtime(settings):
        pass


def _child(settings: Settings, sock: socket.socket, worker: bool, conn: Connection) -> None:
    """One API process of `qlp serve --workers N`, in a spawned interpreter. It reports
    ("ready", pid) or ("failed", message, exit code) to the parent through `conn`."""
    # Its own process group: a Ctrl-C at the terminal reaches the parent only, which stops
    # each process once (a second SIGINT would make uvicorn skip the graceful shutdown).
    os.setpgid(0, 0)
    budget = settings.server_shutdown_grace_s + STOP_MARGIN_S
    threading.Thread(
        target=_exit_with_parent, args=(conn, budget), name="qlp-serve-parent", daemon=True
    ).start()

    def started() -> None:
        _tell(conn, ("ready", os.getpid()))

    try:
        serve_on(settings, sock, worker=worker, started=started)
    except QLPError as exc:
        _tell(conn, ("failed", exc.message, exc.exit_code))
        sys.exit(exc.exit_code)
    except Exception as exc:  # a bug: still one line from the parent
        _tell(
            conn,
            ("failed", f"unexpected error ({type(exc).__name__}: {exc}); this is a bug in QLP", 1),
        )
        sys.exit(1)


def _tell(conn: Connection, message: tuple[Any, ...]) -> None:
    with contextlib.suppress(OSError):
        conn.send(message)


def _exit_with_parent(conn: Connection, budget: float) -> None:
    """Stop gracefully when the parent is gone (its end of `conn` closes), killed included,
    so that no API process outlives it; exit for good if that takes longer than `budget`."""
    with contextlib.suppress(EOFError, OSError):
        while True:
            conn.recv()  # the parent sends nothing: this returns with EOF
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(budget)
    os._exit(1)
