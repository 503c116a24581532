"""Wall time to validate a generated 20-file Python project, and the share of it that is
sandbox start-up.

    .venv/bin/python bench/validation_project.py [--runs 3]

The project: a package of 12 modules, 7 test modules (42 tests, all passing) and a README.
Start-up is measured in the same run: a trivial command (`true`) in a fresh session, and in a
warm one, against the same command run directly (the baseline). The start-up share is
(sandboxed commands x start-up of one command) / (sum of the commands' wall times).
Writes bench/results/validation_project.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import ROOT  # noqa: F401 - puts the repository root on sys.path

from qlp.config import Settings
from qlp.engine.wiring import make_sandbox
from qlp.sandbox.base import Sandbox
from qlp.validation import ValidationConfig, validate

MODULES = 12
TEST_MODULES = 7


def module_source(i: int) -> str:
    return f'''"""Module {i}: small arithmetic helpers."""

from __future__ import annotations


def scale_{i}(values: list[float], factor: float = {i}.0) -> list[float]:
    return [v * factor for v in values]


def clamp_{i}(value: float, low: float = 0.0, high: float = {i * 10}.0) -> float:
    return max(low, min(high, value))


def mean_{i}(values: list[float]) -> float:
    if not values:
        raise ValueError("mean of nothing")
    return sum(values) / len(values)


class Counter{i}:
    def __init__(self) -> None:
        self.count = 0

    def add(self, n: int = 1) -> int:
        self.count += n
        return self.count
'''


def test_source(i: int) -> str:
    return f"""from pkg.mod{i:02d} import Counter{i}, clamp_{i}, mean_{i}, scale_{i}
import pytest


def test_scale():
    assert scale_{i}([1.0, 2.0]) == [{i}.0, {2 * i}.0]


def test_clamp_low():
    assert clamp_{i}(-5) == 0.0


def test_clamp_high():
    assert clamp_{i}(10_000) == {i * 10}.0


def test_mean():
    assert mean_{i}([1.0, 3.0]) == 2.0


def test_mean_empty():
    with pytest.raises(ValueError):
        mean_{i}([])


def test_counter():
    c = Counter{i}()
    c.add()
    assert c.add(2) == 3
"""


def write_project(root: Path) -> int:
    (root / "pkg").mkdir(parents=True)
    (root / "tests").mkdir()
    (root / "pkg" / "__init__.py").write_text('"""Generated package."""\n')
    for i in range(1, MODULES):
        (root / "pkg" / f"mod{i:02d}.py").write_text(module_source(i))
    for i in range(1, TEST_MODULES + 1):
        (root / "tests" / f"test_mod{i:02d}.py").write_text(test_source(i))
    (root / "README.md").write_text("# pkg\n\nSee [the tests](tests/test_mod01.py).\n")
    return sum(1 for p in root.rglob("*") if p.is_file())


async def trivial(sandbox: Sandbox, workspace: Path, runs: int) -> tuple[list[float], list[float]]:
    fresh, warm = [], []
    for _ in range(runs):
        t = time.perf_counter()
        async with sandbox.session(workspace) as s:
            await s.run(["true"])
            fresh.append(time.perf_counter() - t)
            t = time.perf_counter()
            await s.run(["true"])
            warm.append(time.perf_counter() - t)
    return fresh, warm


def direct(runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        t = time.perf_counter()
        subprocess.run(["true"], check=True)
        out.append(time.perf_counter() - t)
    return out


async def main(runs: int) -> int:
    with tempfile.TemporaryDirectory(prefix="qlp-bench-") as tmp:
        workspace = Path(tmp) / "project"
        files = write_project(workspace)
        sandbox = make_sandbox(Settings(home=Path(tmp) / "home"))
        sandbox.check()
        config = ValidationConfig()
        walls, reports = [], []
        for _ in range(runs):
            started = time.perf_counter()
            async with sandbox.session(workspace) as session:
                report = await validate(session, workspace, config=config)
            walls.append(time.perf_counter() - started)
            reports.append(report)
        fresh, warm = await trivial(sandbox, workspace, 20)
    base = direct(20)
    report = reports[-1]
    startup = statistics.median(warm)
    commands = report.sandbox_commands
    share = commands * startup / report.sandbox_time_s
    per_check = {c.name: round(c.duration_s, 2) for c in report.checks if c.ran}
    result = {
        "files": files,
        "runs": runs,
        "validate_wall_s_median": round(statistics.median(walls), 2),
        "validate_wall_s_all": [round(w, 2) for w in walls],
        "sandboxed_commands": commands,
        "sum_command_wall_s": round(report.sandbox_time_s, 2),
        "trivial_command_fresh_session_ms": round(statistics.median(fresh) * 1000, 1),
        "trivial_command_warm_session_ms": round(startup * 1000, 1),
        "trivial_command_direct_ms": round(statistics.median(base) * 1000, 2),
        "startup_share_of_command_time": round(share, 4),
        "startup_share_of_wall": round(commands * startup / statistics.median(walls), 4),
        "per_check_s": per_check,
        "tests": report.tests.to_dict() | {"failures": len(report.tests.failures)},
        "scores": report.scores.to_dict(),
        "not_run": report.not_run,
    }
    print(json.dumps(result, indent=2))
    out = Path(__file__).resolve().parent / "results" / "validation_project.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    ok = report.tests_ok and not report.not_run and files == 20
    return 0 if ok else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    sys.exit(asyncio.run(main(parser.parse_args().runs)))
