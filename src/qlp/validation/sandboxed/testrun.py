"""Run a test command and collect the report files it writes (run inside the sandbox).

Each sandboxed command has its own private /tmp, so a report written there must be read in the
same command: this script runs the test command, then prints one JSON object holding its exit
code, the tail of its output and the report files' text.

Standard input: JSON {"argv": [...], "timeout_s": N, "write": {path: text}, "collect": {name: path},
"max_output": N, "max_file": N}.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any


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
            with open(path, "rb") as fh:
                data = fh.read(limit + 1)
        except OSError:
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
