"""For tests that leave a FIFO where QLP reads: a regression must fail the test, not hang it.

A plain open() of a FIFO waits for the other end: a reader until a writer opens it, a writer
until a reader does. Inside `fifo_guard`, a watcher waits `after_s` seconds, then keeps
releasing whoever waits on each FIFO: it opens the write end when a reader is waiting (a
non-blocking open for writing succeeds only then) and closes it, so the reader sees end of
file; and it opens the read end for a moment, so a waiting writer goes on (and what it
writes shows that it was there). Leaving the block, the test fails naming every FIFO someone
had to be released from. QLP itself must never wait on one.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def fifo_guard(*fifos: Path, after_s: float = 5.0) -> Iterator[None]:
    stop = threading.Event()
    released: list[Path] = []

    def watch() -> None:
        if stop.wait(after_s):
            return
        while not stop.is_set():
            for fifo in fifos:
                with contextlib.suppress(OSError):  # ENXIO: nobody reads it (or it is gone)
                    os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
                    released.append(fifo)
                try:
                    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
                except OSError:  # gone
                    continue
                try:
                    stop.wait(0.05)  # a writer waiting for a reader goes on and writes
                    with contextlib.suppress(BlockingIOError):
                        if os.read(reader, 1 << 16):
                            released.append(fifo)
                finally:
                    os.close(reader)
            stop.wait(0.05)

    watcher = threading.Thread(target=watch, name="fifo-guard", daemon=True)
    watcher.start()

    def verdict() -> str:
        names = ", ".join(sorted({str(f) for f in released}))
        return f"something waited on a FIFO ({names}) for over {after_s:g} s and was released"

    try:
        yield
    except BaseException as exc:
        stop.set()
        watcher.join()
        if released:
            raise AssertionError(verdict()) from exc
        raise
    stop.set()
    watcher.join()
    assert not released, verdict()
