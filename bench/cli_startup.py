"""Start-up time of the `qlp` command line, against `python -c "import typer, rich"` in the
same run.

    .venv/bin/python -m bench.cli_startup [--runs 15] [--before PATH/src]

Each command runs `--runs` times in a fresh interpreter, the commands taking turns (so a
burst of load from elsewhere hits all of them alike), after one warm-up run each (byte code
compiled). Reports, per command, the median wall time and the median CPU time (user + sys of
the child, which load from other processes does not inflate), and each median's difference
against the baseline's. With `--before`, the same commands also run with that source tree
first on PYTHONPATH (e.g. `git worktree add /tmp/cli-old HEAD~1` then
`--before /tmp/cli-old/src`), so before and after come from one run.

Target (issue 11): `qlp --help` and `qlp version` at most 0.5 s above the baseline.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench._common import machine, report

BASELINE = [sys.executable, "-c", "import typer, rich"]
COMMANDS = {"qlp --help": ["--help"], "qlp version": ["version"]}
TARGET_S = 0.5


def _once(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall and CPU seconds of one run of `argv` (which must succeed)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def _env(home: Path, src: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("QLP_")}
    env.update(QLP_HOME=str(home), COLUMNS="100", TERM="dumb")
    env.pop("PYTHONPATH", None)
    if src is not None:
        env["PYTHONPATH"] = src
    return env


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument(
        "--before", metavar="SRC", help="a source tree (its src/ folder) to time as 'before'"
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="qlp-bench-cli-") as tmp:
        variants: dict[str, dict[str, str]] = {"after": _env(Path(tmp), None)}
        if args.before:
            src = str(Path(args.before).resolve())
            if not (Path(src) / "qlp" / "__init__.py").is_file():
                parser.error(f"--before {args.before}: no qlp package there (give its src/)")
            variants = {"before": _env(Path(tmp), src), **variants}

        jobs: dict[str, tuple[list[str], dict[str, str]]] = {
            "baseline: import typer, rich": (BASELINE, variants["after"])
        }
        for variant, env in variants.items():
            for name, extra in COMMANDS.items():
                jobs[f"{variant}: {name}"] = ([sys.executable, "-m", "qlp", *extra], env)

        for argv, env in jobs.values():  # warm-up: byte code compiled, files cached
            _once(argv, env)
        samples: dict[str, list[tuple[float, float]]] = {name: [] for name in jobs}
        for _ in range(args.runs):
            for name, (argv, env) in jobs.items():
                samples[name].append(_once(argv, env))

    results: dict[str, Any] = {}
    base_wall = statistics.median(w for w, _ in samples["baseline: import typer, rich"])
    base_cpu = statistics.median(c for _, c in samples["baseline: import typer, rich"])
    for name, runs in samples.items():
        wall = statistics.median(w for w, _ in runs)
        cpu = statistics.median(c for _, c in runs)
        results[name] = {
            "median_wall_s": round(wall, 3),
            "median_cpu_s": round(cpu, 3),
            "wall_over_baseline_s": round(wall - base_wall, 3),
            "cpu_over_baseline_s": round(cpu - base_cpu, 3),
        }
    after = [results[f"after: {name}"]["wall_over_baseline_s"] for name in COMMANDS]
    report(
        "cli_startup",
        {
            "machine": machine(),
            "load_average": [round(x, 2) for x in os.getloadavg()],
            "runs": args.runs,
            "target_over_baseline_s": TARGET_S,
            "target_met": all(d <= TARGET_S for d in after),
            "results": results,
        },
    )


if __name__ == "__main__":
    main()
