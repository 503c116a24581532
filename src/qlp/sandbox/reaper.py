"""The reaper: a small process beside QLP that ends sandboxes QLP can no longer end itself.

QLP enforces each command's deadline from its own event loop, and kills what a command left
when it ends. Neither happens if QLP dies (SIGKILL, OOM, a crash) or its loop stalls: a
`while True: pass` in a gVisor sandbox once kept a core busy for 13 minutes after the test
process that started it was killed. So every sandbox QLP starts is also registered here, with
a deadline a little past its own: the reaper kills it at that deadline, and kills everything
still registered the moment QLP's end of the socket closes, which the kernel does however
QLP ends.

What can be registered (each as one message on a SOCK_SEQPACKET socket pair):

- a process, as a pidfd passed over the socket (SCM_RIGHTS): no pid that could be reused;
  a pidfd of a PID namespace's init ends the whole namespace;
- a cgroup (its directories): every process in it is killed, repeatedly, until none is left;
- a Docker container (engine URL and id): removed with force;
- a gVisor container (runsc's argv prefix and id): `runsc delete --force`.

The reaper runs in a session of its own (a Ctrl-C to QLP's terminal does not reach it) and
imports little (the cgroup helpers; the Docker SDK only once a container must be removed).
`python -m qlp.sandbox.reaper FD` is its entry point; `Reaper.get()` starts one per QLP
process, on first use, and again if it died.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qlp.sandbox.cgroups import kill_members, remove_dirs

# How long past QLP's own deadline the reaper waits before it kills: QLP normally gets there
# first and says why the command ended.
GRACE_S = 5.0
MAX_MESSAGE = 65536
# All the reaper is given of QLP's environment: enough to import itself and reach Docker.
REAPER_ENV = ("PATH", "PYTHONPATH", "DOCKER_HOST", "DOCKER_CERT_PATH", "DOCKER_TLS_VERIFY")


# -- the QLP side ---------------------------------------------------------------------------
class Reaper:
    """QLP's handle on its reaper process. Thread-safe; one per QLP process."""

    _instance: Reaper | None = None
    _instance_lock = threading.Lock()

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._sock: socket.socket | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._owner = os.getpid()

    @classmethod
    def get(cls) -> Reaper:
        with cls._instance_lock:
            if cls._instance is None or cls._instance._owner != os.getpid():
                cls._instance = cls()
            return cls._instance

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def _start(self) -> socket.socket:
        if self._sock is not None and self._proc is not None and self._proc.poll() is None:
            return self._sock
        self._close()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            ours.set_inheritable(False)
            self._proc = subprocess.Popen(  # noqa: S603 - our own interpreter and module
                [sys.executable, "-m", "qlp.sandbox.reaper", str(theirs.fileno())],
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                start_new_session=True,
                env={k: v for k, v in os.environ.items() if k in REAPER_ENV},
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self._sock = ours
        return ours

    def _close(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = None
        if self._proc is not None:
            with contextlib.suppress(ChildProcessError, subprocess.TimeoutExpired):
                self._proc.wait(timeout=0)
            self._proc = None

    def _send(self, message: dict[str, Any], fds: list[int] | None = None) -> None:
        data = json.dumps(message).encode()
        with self._lock:
            for attempt in (1, 2):
                sock = self._start()
                try:
                    if fds:
                        socket.send_fds(sock, [data], fds)
                    else:
                        sock.send(data)
                    return
                except OSError:
                    # The reaper died (someone killed it): start another and say it again.
                    # What the dead one held is lost to it, so QLP's own cleanup is still
                    # what ends those sandboxes while QLP lives.
                    self._close()
                    if attempt == 2:
                        raise

    def watch(
        self,
        *,
        timeout_s: float | None,
        pidfd: int | None = None,
        cgroup: list[Path] | None = None,
        container: tuple[str | None, str] | None = None,
        runsc: tuple[list[str], str] | None = None,
    ) -> int:
        """Register a sandbox; returns a token for `forget`. timeout_s None: no deadline."""
        token = next(self._ids)
        message: dict[str, Any] = {"op": "watch", "id": token}
        if timeout_s is not None:
            message["deadline"] = time.monotonic() + timeout_s + GRACE_S
        if cgroup is not None:
            message["cgroup"] = [str(d) for d in cgroup]
        if container is not None:
            message["container"] = {"url": container[0], "id": container[1]}
        if runsc is not None:
            message["runsc"] = {"argv": runsc[0], "id": runsc[1]}
        self._send(message, [pidfd] if pidfd is not None else None)
        return token

    def forget(self, token: int) -> None:
        """The sandbox was ended by QLP itself: the reaper lets go of it (and its pidfd)."""
        with contextlib.suppress(OSError):
            self._send({"op": "forget", "id": token})


# -- the reaper process ---------------------------------------------------------------------
def _remove_container(url: str | None, container_id: str) -> None:
    with contextlib.suppress(Exception):
        import docker

        client = docker.DockerClient(base_url=url, timeout=60) if url else docker.from_env()
        try:
            client.api.remove_container(container_id, force=True)
        finally:
            client.close()


@dataclass
class _Entry:
    deadline: float | None
    pidfd: int | None = None
    cgroup: list[str] = field(default_factory=list)
    container: dict[str, Any] | None = None
    runsc: dict[str, Any] | None = None

    def kill(self, *, final: bool) -> None:
        """Kill what the entry holds. `final`: QLP is gone, so also remove what it would have
        removed (its cgroup directories, the container, runsc's state)."""
        if self.pidfd is not None:
            with contextlib.suppress(OSError):
                signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)
        if self.cgroup:
            dirs = [Path(d) for d in self.cgroup]
            kill_members(dirs)
            if final:
                remove_dirs(dirs)
        if self.container is not None:
            _remove_container(self.container.get("url"), self.container["id"])
        if self.runsc is not None and final:
            from qlp.sandbox.gvisor import delete_container  # gvisor imports this module

            delete_container(self.runsc["argv"], self.runsc["id"])

    def close(self) -> None:
        if self.pidfd is not None:
            with contextlib.suppress(OSError):
                os.close(self.pidfd)
            self.pidfd = None


def serve(sock: socket.socket) -> None:
    """The reaper's loop: until QLP's end closes, keep entries and kill at their deadlines."""
    entries: dict[int, _Entry] = {}
    sel = selectors.DefaultSelector()
    sel.register(sock, selectors.EVENT_READ)
    while True:
        now = time.monotonic()
        for entry in list(entries.values()):
            if entry.deadline is not None and entry.deadline <= now:
                entry.kill(final=False)
                entry.deadline = None  # killed once; QLP (if alive) still forgets it
        deadlines = [e.deadline for e in entries.values() if e.deadline is not None]
        timeout = max(0.0, min(deadlines) - now) if deadlines else None
        if not sel.select(timeout):
            continue
        try:
            data, fds, _, _ = socket.recv_fds(sock, MAX_MESSAGE, 4)
        except OSError:
            data, fds = b"", []
        if not data:
            break  # QLP is gone
        try:
            message = json.loads(data)
        except ValueError:
            for fd in fds:
                os.close(fd)
            continue
        token = int(message.get("id", 0))
        if message.get("op") == "forget":
            gone = entries.pop(token, None)
            if gone is not None:
                gone.close()
            continue
        entries[token] = _Entry(
            deadline=message.get("deadline"),
            pidfd=fds[0] if fds else None,
            cgroup=list(message.get("cgroup", [])),
            container=message.get("container"),
            runsc=message.get("runsc"),
        )
        for extra in fds[1:]:
            os.close(extra)
    for entry in entries.values():
        entry.kill(final=True)
        entry.close()


def main(argv: list[str]) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # only the socket's end ends the reaper
    sock = socket.socket(fileno=int(argv[0]))
    serve(sock)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
