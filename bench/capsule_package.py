"""Packaging and verifying a capsule of a generated 1,000-file, 50 MiB project.

    .venv/bin/python -m bench.capsule_package [--files 1000] [--mib 50]

The project is generated in a temporary folder from a fixed seed: half the files are
compressible text, half random bytes, sizes vary, and one file is 8 MiB (a large file must
be streamed, never held whole). Each measurement runs in a fresh child process, so its
peak RSS (ru_maxrss) is its own: "peak memory above baseline" is that peak minus the
child's RSS after its imports. tracemalloc's peak (the Python heap) is measured in a
separate run because tracing slows allocation. Baselines in the same run: a plain
zipfile.ZipFile.write of the same files (what packaging costs without hashing, signing and
determinism), and ZipFile.testzip() over the capsule (reading every entry, CRC only).
Target: build peak memory under 100 MB above the baseline.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc
import zipfile
from pathlib import Path
from typing import Any

from bench._common import ROOT, machine, report

SEED = 20250301
BIG_FILE = 8 * 1024 * 1024
WORDS = ("def", "class", "return", "import", "self", "value", "user", "token", "auth", "route")


def _rss_mib() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return 0.0


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def generate(root: Path, files: int, total: int) -> tuple[int, int]:
    """`files` files, `total` bytes, deterministic. Returns (files, bytes) written."""
    rng = random.Random(SEED)
    weights = [rng.uniform(0.2, 1.8) for _ in range(files - 1)]
    rest = total - BIG_FILE
    sizes = [BIG_FILE] + [int(rest * w / sum(weights)) for w in weights]
    sizes[-1] += total - sum(sizes)
    written = 0
    for i, size in enumerate(sizes):
        path = root / f"pkg{i % 37:02d}" / f"sub{i % 5}" / f"file{i:04d}.{'py' if i % 2 else 'bin'}"
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("wb") as fh:
            left = size
            while left > 0:
                n = min(left, 1024 * 1024)
                if i % 2:  # compressible: code-like words
                    text = " ".join(rng.choice(WORDS) for _ in range(n // 5 + 1)) + "\n"
                    block = text.encode()[:n]
                else:
                    block = rng.randbytes(n)
                fh.write(block)
                left -= len(block)
        written += size
    return len(sizes), written


# -- child: one measurement in a fresh process ---------------------------------------------


def _child(phase: str, project: Path, out: Path, trace: bool) -> dict[str, Any]:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from qlp.capsule.base import CapsuleInputs, Totals
    from qlp.capsule.builder import build_capsule
    from qlp.capsule.verify import verify_capsule

    key = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
    baseline = _rss_mib()
    if trace:
        tracemalloc.start()
    start = time.perf_counter()
    result: dict[str, Any] = {}
    if phase == "build":
        inputs = CapsuleInputs(
            intent_id="QLI-01J00000000000000000BENCH",
            intent_text="benchmark project",
            project_dir=project,
            totals=Totals(1000, 2000, 0.01),
            transcript=({"call": i, "text": "x" * 200} for i in range(500)),
        )
        built = build_capsule(inputs, out, key, overwrite=True)
        result.update(capsule_bytes=built.size, sha256=built.sha256)
    elif phase == "verify":
        verified = verify_capsule(out, key.public_key())
        if not verified.ok:
            raise SystemExit(f"verify failed: {verified.problems[:3]}")
        result.update(entries=verified.entries_checked)
    elif phase == "plain-zip":
        with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED, compresslevel=6) as zf:
            for path in sorted(project.rglob("*")):
                if path.is_file():
                    zf.write(path, path.relative_to(project).as_posix())
    elif phase == "testzip":
        with zipfile.ZipFile(out) as zf:
            bad = zf.testzip()
        if bad is not None:
            raise SystemExit(f"testzip: {bad}")
    seconds = time.perf_counter() - start
    result.update(seconds=round(seconds, 3), rss_baseline_mib=round(baseline, 1))
    result["peak_rss_above_baseline_mib"] = round(_peak_mib() - baseline, 1)
    if trace:
        result["tracemalloc_peak_mib"] = round(tracemalloc.get_traced_memory()[1] / 2**20, 2)
        tracemalloc.stop()
    return result


def _run_child(phase: str, project: Path, out: Path, trace: bool = False) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "bench.capsule_package", "--child", phase, str(project), str(out)]
    if trace:
        cmd.append("--trace")
    done = subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, text=True)
    data: dict[str, Any] = json.loads(done.stdout)
    return data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--mib", type=int, default=50)
    parser.add_argument("--child", nargs=3, metavar=("PHASE", "PROJECT", "OUT"))
    parser.add_argument("--trace", action="store_true")
    args = parser.parse_args()
    if args.child:
        phase, project, out = args.child
        print(json.dumps(_child(phase, Path(project), Path(out), args.trace)))
        return

    with tempfile.TemporaryDirectory(prefix="qlp-bench-capsule-") as tmp:
        project = Path(tmp) / "project"
        t0 = time.perf_counter()
        files, size = generate(project, args.files, args.mib * 1024 * 1024)
        gen_s = time.perf_counter() - t0
        capsule = Path(tmp) / "bench.qlcapsule"
        plain = Path(tmp) / "plain.zip"

        build = _run_child("build", project, capsule)
        build_trace = _run_child("build", project, Path(tmp) / "traced.qlcapsule", trace=True)
        again = _run_child("build", project, Path(tmp) / "again.qlcapsule")
        verify = _run_child("verify", project, capsule)
        verify_trace = _run_child("verify", project, capsule, trace=True)
        plain_zip = _run_child("plain-zip", project, plain)
        testzip = _run_child("testzip", project, capsule)

    data = {
        "benchmark": "capsule_package",
        "command": ".venv/bin/python -m bench.capsule_package",
        "machine": machine(),
        "project": {"files": files, "bytes": size, "generate_seconds": round(gen_s, 2)},
        "build": {
            "seconds": build["seconds"],
            "capsule_bytes": build["capsule_bytes"],
            "peak_rss_above_baseline_mib": build["peak_rss_above_baseline_mib"],
            "tracemalloc_peak_mib": build_trace["tracemalloc_peak_mib"],
            "deterministic": build["sha256"] == again["sha256"] == build_trace["sha256"],
            "target_peak_mib": 100,
        },
        "verify": {
            "seconds": verify["seconds"],
            "entries": verify["entries"],
            "peak_rss_above_baseline_mib": verify["peak_rss_above_baseline_mib"],
            "tracemalloc_peak_mib": verify_trace["tracemalloc_peak_mib"],
        },
        "baselines": {
            "plain_zip_write_seconds": plain_zip["seconds"],
            "testzip_seconds": testzip["seconds"],
        },
        "ratios": {
            "build_vs_plain_zip": round(build["seconds"] / plain_zip["seconds"], 2),
            "verify_vs_testzip": round(verify["seconds"] / testzip["seconds"], 2),
        },
    }
    report("capsule_package", data)
    if build["peak_rss_above_baseline_mib"] >= 100:
        raise SystemExit("build peak memory is above the 100 MB target")


if __name__ == "__main__":
    main()
