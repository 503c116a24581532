"""20 concurrent sandbox sessions on this machine: throughput and failures.

    .venv/bin/python bench/sandbox_concurrency.py [--sessions 20] [--commands 5]
        [--backends bubblewrap,docker,gvisor]

Each session gets its own workspace and runs `--commands` commands one after another: write
a file, then python reading it back and doing a little work. The baseline is the same
commands as plain subprocesses with the same concurrency. A failure is any command that did
not exit 0 with the expected output.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from sandbox_common import RUNTIME, Dockerd, backends

WORK = "import sys; n = int(open(sys.argv[1]).read()); print(sum(i * i for i in range(n)))"
N = 200_000
EXPECTED = str(sum(i * i for i in range(N)))


async def plain_session(ws: Path, commands: int) -> int:
    failures = 0
    for i in range(commands):
        (ws / f"n{i}").write_text(str(N))
        proc = await asyncio.create_subprocess_exec(
            str(RUNTIME / "bin" / "python"), "-c", WORK, str(ws / f"n{i}"),
            stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, _ = await proc.communicate()
        failures += proc.returncode != 0 or out.decode().strip() != EXPECTED
    return failures


async def sandbox_session(sb: Any, ws: Path, commands: int) -> int:
    failures = 0
    async with sb.session(ws) as s:
        for i in range(commands):
            w = await s.run(["sh", "-c", f"echo {N} > n{i}"])
            r = await s.run(["python", "-c", WORK, f"n{i}"])
            failures += not (w.ok and r.ok and r.stdout.strip() == EXPECTED)
    return failures


async def measure(kind: str, sb: Any, sessions: int, commands: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="qlp-bench-conc-") as root:
        dirs = []
        for i in range(sessions):
            d = Path(root) / f"ws{i}"
            d.mkdir()
            dirs.append(d)
        t = time.perf_counter()
        if sb is None:
            results = await asyncio.gather(*(plain_session(d, commands) for d in dirs))
        else:
            results = await asyncio.gather(*(sandbox_session(sb, d, commands) for d in dirs))
        wall = time.perf_counter() - t
    total = sessions * commands
    return {"wall_s": wall, "runs_per_s": total / wall, "failures": float(sum(results))}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sessions", type=int, default=20)
    ap.add_argument("--commands", type=int, default=5)
    ap.add_argument("--backends", default="bubblewrap,docker,gvisor")
    args = ap.parse_args()
    dockerd = Dockerd()
    results: dict[str, dict[str, float]] = {}
    try:
        results["plain subprocess"] = asyncio.run(
            measure("plain", None, args.sessions, args.commands)
        )
        for name in args.backends.split(","):
            for made_name, sb in backends([name], dockerd).items():
                results[made_name] = asyncio.run(measure(name, sb, args.sessions, args.commands))
    finally:
        dockerd.stop()
    print(f"{args.sessions} concurrent sessions x {args.commands} workloads (python runs)")
    print(f"{'':18} {'wall s':>8} {'runs/s':>8} {'failures':>9}")
    for name, r in results.items():
        print(f"{name:18} {r['wall_s']:8.2f} {r['runs_per_s']:8.2f} {int(r['failures']):9d}")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
