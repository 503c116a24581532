"""Run a test command and collect the report files it writes (run inside the sandbox).

Each sandboxed command has its own private /tmp, so a report written there must be read in the
same command: this script runs the test command, then prints one JSON object holding its exit
code, the tail of its output and the report files' text.

Standard input: JSON {"argv": [...], "timeout_s": N, "write": {path: text}, "collect": {name: path},
"max_output": N, "max_file": N}.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import subprocess
import sys
from typing import Any


def _read_regular(path: str, limit: int) -> bytes:
    """At most `limit` bytes of `path` if it is a regular file; OSError if not. The project's
    tests run as the same user in the same /tmp, so they can put a FIFO where a report is
    expected; a plain open() of it would wait for a writer until the sandbox's timeout.
    (The rule of qlp/safefiles.py, restated: this script runs alone in the sandbox and
    cannot import QLP.)"""
    # Links are followed, as before: in here they lead only to what the sandbox can see.
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", path)
        os.set_blocking(fd, True)
        with os.fdopen(fd, "rb", closefd=False) as fh:
            return fh.read(limit)
    finally:
        os.close(fd)


def _tail(data: bytes, limit: int) -> str:
    text = data.decode("utf-8", errors="replace")
    return text if len(text) <= limit else "...\n" + text[-limit:]


def main() -> None:
    spec: dict[str, Any] = json.loads(sys.stdin.read())
    for path, text in spec.get("write", {}).items():
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(text)
    timed_out = False
    try:
        proc = subprocess.run(  # noqa: S603 - argv from QLP, not from the project
            spec["argv"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            timeout=spec["timeout_s"],
            check=False,
        )
        code, output = proc.returncode, proc.stdout
    except subprocess.TimeoutExpired as exc:
        timed_out, code = True, -1
        output = exc.stdout if isinstance(exc.stdout, bytes) else b""
    files: dict[str, str | None] = {}
    limit = int(spec.get("max_file", 4_000_000))
    for name, path in spec.get("collect", {}).items():
        try:
            data = _read_regular(path, limit + 1)
        except OSError:  # missing, or not a regular file: no report
            files[name] = None
            continue
        files[name] = None if len(data) > limit else data.decode("utf-8", errors="replace")
    result = {
        "exit_code": code,
        "timed_out": timed_out,
        "output": _tail(output, int(spec.get("max_output", 20_000))),
        "files": files,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
