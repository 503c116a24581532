"""What the engine benchmarks share: a private PostgreSQL, settings, scripted DAGs."""

from __future__ import annotations

import json
import platform
import resource
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from qlp.store.embedded import EmbeddedPostgres

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # so `tests.support` and `tests.fakes` import
    sys.path.insert(0, str(ROOT))


@contextmanager
def private_postgres() -> Iterator[tuple[str, Path]]:
    """A throw-away embedded PostgreSQL and QLP_HOME; both removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="qlp-bench-") as tmp:
        server = EmbeddedPostgres(Path(tmp) / "pg" / "data")
        url = server.acquire()
        try:
            home = Path(tmp) / "home"
            home.mkdir()
            yield url, home
        finally:
            server.release()


def layered_dag(width: int, depth: int) -> dict[str, list[str]]:
    """`depth` layers of `width` tasks; every task depends on the task above it."""
    deps: dict[str, list[str]] = {}
    n = 0
    above: list[str] = []
    for _ in range(depth):
        layer = []
        for i in range(width):
            n += 1
            task_id = f"QL-DEV-{n:03d}"
            deps[task_id] = [above[i]] if above else []
            layer.append(task_id)
        above = layer
    return deps


def script_for(deps: Mapping[str, Sequence[str]]) -> dict[str, Any]:
    from tests.support import dag_script

    return {"responses": dag_script(deps)}


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def machine() -> dict[str, Any]:
    import os

    return {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
    }


def report(name: str, data: dict[str, Any]) -> None:
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(data, indent=2) + "\n")
    print(json.dumps(data, indent=2))


def private_postgres_pids(home: Path) -> list[int]:
    """The postmaster of a `private_postgres()` server (found from its `home`) and its live
    children (backends, checkpointer, ...), for CPU accounting."""
    pidfile = home.parent / "pg" / "data" / "postmaster.pid"
    postmaster = int(pidfile.read_text().split()[0])
    pids = [postmaster]
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == postmaster:
            pids.append(int(entry.name))
    return pids
