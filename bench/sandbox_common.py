"""Shared by the sandbox benchmarks: building backends, and a private dockerd if needed."""

from __future__ import annotations

import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from qlp.errors import SandboxError
from qlp.sandbox.base import Limits
from qlp.sandbox.bubblewrap import BubblewrapConfig, BubblewrapSandbox
from qlp.sandbox.docker_backend import DockerConfig, DockerSandbox
from qlp.sandbox.gvisor import GvisorConfig, GvisorSandbox
from qlp.sandbox.runtime import SYSTEM_RUNTIME, resolve_runtime, runtime_path

RUNTIME = resolve_runtime(None, Path("~/.local/share/qlp").expanduser())
BENCH_IMAGE = "qlp-sandbox-python:bench"
LIMITS = Limits(timeout_s=60, memory_bytes=512 << 20, pids=128)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def summary(values: list[float]) -> dict[str, float]:
    return {
        "p50_ms": percentile(values, 0.5) * 1000,
        "p95_ms": percentile(values, 0.95) * 1000,
        "mean_ms": statistics.fmean(values) * 1000,
    }


class Dockerd:
    """Use a running engine, or start a private one (vfs, no bridge, no iptables)."""

    def __init__(self) -> None:
        self.url: str | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.base: Path | None = None

    def ensure(self) -> bool:
        import docker

        try:
            docker.from_env().ping()
            return True
        except Exception:
            pass
        if shutil.which("dockerd") is None:
            return False
        self.base = Path(tempfile.mkdtemp(prefix="qlp-bench-dockerd-"))
        self.url = f"unix://{self.base}/docker.sock"
        (self.base / "data").mkdir()
        cmd = [  # data root on a tmpfs private to dockerd's mount namespace (see tests)
            "unshare", "--mount", "--propagation=private", "--", "sh", "-c",
            'mount -t tmpfs -o size=4g,mode=0710 tmpfs "$1" && shift && exec "$@"', "sh",
            str(self.base / "data"),
            "dockerd", "--storage-driver=vfs", "--bridge=none", "--iptables=false",
            "--ip6tables=false", f"--data-root={self.base}/data", f"--exec-root={self.base}/exec",
            f"--pidfile={self.base}/pid", f"--host={self.url}", "--log-level=error",
        ]  # fmt: skip
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(120):
            try:
                docker.DockerClient(base_url=self.url).ping()
                return True
            except Exception:
                time.sleep(0.5)
        return False

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=30)
        if self.base is not None:
            shutil.rmtree(self.base, ignore_errors=True)


def backends(names: list[str], dockerd: Dockerd) -> dict[str, Any]:
    made: dict[str, Any] = {}
    for name in names:
        try:
            if name == "bubblewrap":
                sb: Any = BubblewrapSandbox(
                    BubblewrapConfig(runtime=RUNTIME, default_limits=LIMITS)
                )
            elif name == "gvisor":
                sb = GvisorSandbox(GvisorConfig(runtime=RUNTIME, default_limits=LIMITS))
            else:
                if not dockerd.ensure():
                    print("docker: skipped (no engine and cannot start one)")
                    continue
                import docker

                from qlp.sandbox.docker_image import build_image

                client = (
                    docker.DockerClient(base_url=dockerd.url) if dockerd.url else docker.from_env()
                )
                build_image(client, RUNTIME, BENCH_IMAGE, slim=True)
                sb = DockerSandbox(
                    DockerConfig(
                        base_url=dockerd.url,
                        images={"python": BENCH_IMAGE},
                        default_limits=LIMITS,
                        path=runtime_path(RUNTIME),
                    )
                )
            sb.check()
            made[name] = sb
        except SandboxError as exc:
            print(f"{name}: skipped ({exc})")
    return made


__all__ = ["SYSTEM_RUNTIME", "backends", "summary"]
