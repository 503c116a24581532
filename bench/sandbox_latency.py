"""Start-to-exit latency of `python -c pass` in each sandbox backend, against a plain
subprocess running the same interpreter in the same run.

    .venv/bin/python bench/sandbox_latency.py [--runs 200] [--backends bubblewrap,docker,gvisor]

Reports p50/p95 per backend and the overhead over the plain subprocess (difference of p50s,
and their ratio). Also times a bare `bwrap` call (namespaces only, no QLP) for reference.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import tempfile
import time
from pathlib import Path

from sandbox_common import RUNTIME, Dockerd, backends, summary

PYTHON = str(RUNTIME / "bin" / "python")
BARE_BWRAP = [
    "bwrap", "--unshare-all", "--die-with-parent", "--ro-bind", "/usr", "/usr",
    "--symlink", "usr/lib", "/lib", "--symlink", "usr/lib64", "/lib64",
    "--symlink", "usr/bin", "/bin",
    "--ro-bind", str(RUNTIME), str(RUNTIME), "--proc", "/proc", "--dev", "/dev", "--",
    PYTHON, "-c", "pass",
]  # fmt: skip


def time_sync(argv: list[str], runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        t = time.perf_counter()
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
        out.append(time.perf_counter() - t)
    return out


async def time_backend(sb: object, runs: int) -> list[float]:
    out = []
    with tempfile.TemporaryDirectory(prefix="qlp-bench-") as ws:
        async with sb.session(Path(ws)) as s:  # type: ignore[attr-defined]
            await s.run(["python", "-c", "pass"])  # warm-up (creates the docker container)
            for _ in range(runs):
                t = time.perf_counter()
                r = await s.run(["python", "-c", "pass"])
                out.append(time.perf_counter() - t)
                assert r.ok, r
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--backends", default="bubblewrap,docker,gvisor")
    args = ap.parse_args()
    dockerd = Dockerd()
    try:
        time_sync([PYTHON, "-c", "pass"], 10)  # warm the page cache
        results = {"plain subprocess": summary(time_sync([PYTHON, "-c", "pass"], args.runs))}
        results["bare bwrap (reference)"] = summary(time_sync(BARE_BWRAP, args.runs))
        # One backend at a time, each set up just before it is timed: a docker engine started
        # for the docker row must not be running while bubblewrap is measured.
        for name in args.backends.split(","):
            for made_name, sb in backends([name], dockerd).items():
                results[made_name] = summary(asyncio.run(time_backend(sb, args.runs)))
    finally:
        dockerd.stop()
    base = results["plain subprocess"]["p50_ms"]
    print(f"python -c pass, {args.runs} runs each (ms)")
    print(f"{'':26} {'p50':>8} {'p95':>8} {'+p50':>8} {'ratio':>7}")
    for name, r in results.items():
        extra, ratio = r["p50_ms"] - base, r["p50_ms"] / base
        print(f"{name:26} {r['p50_ms']:8.2f} {r['p95_ms']:8.2f} {extra:8.2f} {ratio:6.2f}x")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
