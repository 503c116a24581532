"""Run one host process (the sandbox launcher) under asyncio, with what asyncio lacks:
capped output, a wall-clock deadline, a limit monitor, and the child's rusage (CPU time and
peak RSS of the whole reaped tree, from wait4).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

from qlp.sandbox.base import KilledReason
from qlp.sandbox.output import CappedBuffer

READ_CHUNK = 65536
MONITOR_INTERVAL_S = 0.05
PIPE_GRACE_S = 2.0


@dataclass
class RawResult:
    exit_code: int
    stdout: CappedBuffer
    stderr: CappedBuffer
    wall_s: float
    cpu_s: float
    max_rss_bytes: int
    killed_reason: KilledReason | None


class _Pump:
    """Reads one pipe into a CappedBuffer from the event loop, without threads."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        fd: int,
        buf: CappedBuffer,
        on_overflow: Callable[[], None],
    ) -> None:
        self.loop = loop
        self.fd = fd
        self.buf = buf
        self.on_overflow = on_overflow
        self.done: asyncio.Future[None] = loop.create_future()
        os.set_blocking(fd, False)
        loop.add_reader(fd, self._readable)

    def _readable(self) -> None:
        try:
            data = os.read(self.fd, READ_CHUNK)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.close()
            return
        if not self.buf.feed(data):
            self.on_overflow()

    def close(self) -> None:
        if not self.done.done():
            self.loop.remove_reader(self.fd)
            os.close(self.fd)
            self.done.set_result(None)


async def _feed_stdin(fd: int, data: bytes) -> None:
    try:
        view = memoryview(data)
        os.set_blocking(fd, False)
        while view:
            try:
                n = os.write(fd, view)
                view = view[n:]
            except BlockingIOError:
                await asyncio.sleep(0.005)
    except BrokenPipeError:
        pass
    finally:
        os.close(fd)


async def run_process(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    timeout_s: float,
    output_cap: int,
    stdin: bytes | None = None,
    pass_fds: Sequence[int] = (),
    after_spawn: Callable[[int], Awaitable[None]] | None = None,
    monitor: Callable[[], KilledReason | None] | None = None,
    kill: Callable[[], None] | None = None,
    after_exit: Callable[[], None] | None = None,
) -> RawResult:
    """Start argv, collect its output, enforce the deadline. `kill` must end the whole tree
    (it stops the command); `after_exit` runs as soon as the launcher has exited, and must
    not block."""
    loop = asyncio.get_running_loop()
    started = time.monotonic()
    # Popen returns once the child has exec'd; it never waits for it to finish.
    proc = subprocess.Popen(  # noqa: S603, ASYNC220 - argv built by the backend, no shell
        list(argv),
        stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=dict(env),
        pass_fds=tuple(pass_fds),
        close_fds=True,
        start_new_session=True,
    )
    assert proc.stdout is not None
    assert proc.stderr is not None
    killed: list[KilledReason] = []
    exited: asyncio.Future[None] = loop.create_future()
    pidfd = os.pidfd_open(proc.pid)

    def stop(reason: KilledReason) -> None:
        if not killed:
            killed.append(reason)
        if kill is not None:
            kill()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)

    def on_exit() -> None:
        loop.remove_reader(pidfd)
        if not exited.done():
            exited.set_result(None)

    loop.add_reader(pidfd, on_exit)
    out = CappedBuffer(output_cap)
    err = CappedBuffer(output_cap)
    pumps = [
        _Pump(loop, os.dup(proc.stdout.fileno()), out, lambda: stop(KilledReason.OUTPUT)),
        _Pump(loop, os.dup(proc.stderr.fileno()), err, lambda: stop(KilledReason.OUTPUT)),
    ]
    proc.stdout.close()
    proc.stderr.close()
    feeder: asyncio.Task[None] | None = None
    if stdin is not None and proc.stdin is not None:
        feeder = asyncio.ensure_future(_feed_stdin(os.dup(proc.stdin.fileno()), stdin))
        proc.stdin.close()
    try:
        if after_spawn is not None:
            await after_spawn(proc.pid)
        deadline = started + timeout_s
        while not exited.done():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                stop(KilledReason.TIMEOUT)
                break
            step = min(remaining, MONITOR_INTERVAL_S) if monitor else remaining
            await asyncio.wait([exited], timeout=step)
            if monitor is not None and not exited.done() and not killed:
                reason = monitor()
                if reason is not None:
                    stop(reason)
                    break
        await exited
        # The pidfd said it exited: this reaps a zombie and does not block.
        _, status, usage = os.wait4(proc.pid, 0)  # noqa: ASYNC222
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.monotonic() - started
        if after_exit is not None:
            # The launcher is gone; what is left of the tree must not hold its pipes open.
            after_exit()
        if monitor is not None and not killed:
            reason = monitor()
            if reason is not None:
                killed.append(reason)
        # Output still buffered in the pipes arrives shortly; a descendant that kept a pipe
        # open must not hold us: `kill` has ended the tree, so this wait is bounded.
        await asyncio.wait([p.done for p in pumps], timeout=PIPE_GRACE_S)
    finally:
        for p in pumps:
            p.close()
        with contextlib.suppress(OSError):
            loop.remove_reader(pidfd)
            os.close(pidfd)
        if feeder is not None:
            feeder.cancel()
        if proc.returncode is None:
            stop(KilledReason.SIGNAL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(proc.pid, 0)  # noqa: ASYNC222 - just SIGKILLed
            proc.returncode = -9
    code = proc.returncode
    exit_code = 128 - code if code < 0 else code
    return RawResult(
        exit_code=exit_code,
        stdout=out,
        stderr=err,
        wall_s=wall,
        cpu_s=usage.ru_utime + usage.ru_stime,
        max_rss_bytes=usage.ru_maxrss * 1024,
        killed_reason=killed[0] if killed else None,
    )
