"""Real sandboxes for the attack suite: every backend this machine can run.

bubblewrap is used when `bwrap` is installed. gVisor when `runsc` is installed and we are
root. Docker: an engine already answering (DOCKER_HOST or the default socket), else -- when
Debian's docker.io is installed and we are root, as in CI -- a private dockerd that this
session starts itself (vfs storage, no bridge, no iptables, its own socket and data root) and
stops at the end. Its image is built from this host's runtime with `docker import`: no
registry is ever contacted. A backend that is installed but does not start is an error, not
a skip.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from qlp.errors import SandboxError
from qlp.sandbox.base import Limits, Sandbox, SandboxSession
from qlp.sandbox.bubblewrap import BubblewrapConfig, BubblewrapSandbox
from qlp.sandbox.docker_backend import LABEL, OWNER_LABEL, DockerConfig, DockerSandbox
from qlp.sandbox.gvisor import GvisorConfig, GvisorSandbox
from qlp.sandbox.owners import owner_label
from qlp.sandbox.runtime import resolve_runtime, runtime_path

BACKENDS = ("bubblewrap", "docker", "gvisor")
TEST_IMAGE = "qlp-sandbox-python:test"
MiB = 1024 * 1024

# Small limits so that every bomb trips quickly; tests that need others say so.
LIMITS = Limits(
    timeout_s=60,
    cpu_s=60,
    memory_bytes=256 * MiB,
    pids=64,
    file_size_bytes=8 * MiB,
    open_files=128,
    output_bytes=1 * MiB,
    cpus=1.0,
)


def runtime_dir() -> Path:
    home = Path(os.environ.get("QLP_HOME", "~/.local/share/qlp")).expanduser()
    return resolve_runtime(None, home)


def _ping(url: str | None) -> bool:
    import docker

    try:
        client = docker.DockerClient(base_url=url) if url else docker.from_env()
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:
        return False


class PrivateDockerd:
    """A dockerd of our own, for a machine that has docker.io but no running engine."""

    def __init__(self) -> None:
        self.base = Path(tempfile.mkdtemp(prefix="qlp-dockerd-"))
        self.url = f"unix://{self.base}/docker.sock"
        self.log = self.base / "dockerd.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        # vfs copies the whole image for every container; on a busy disk that takes
        # seconds, so its data root is a tmpfs, mounted in a mount namespace of dockerd's
        # own (it vanishes with dockerd, whatever happens to this test run).
        data = self.base / "data"
        data.mkdir()
        cmd = [
            "unshare",
            "--mount",
            "--propagation=private",
            "--",
            "sh",
            "-c",
            'mount -t tmpfs -o size=4g,mode=0710 tmpfs "$1" && shift && exec "$@"',
            "sh",
            str(data),
            "dockerd",
            "--storage-driver=vfs",
            "--bridge=none",
            "--iptables=false",
            "--ip6tables=false",
            f"--data-root={data}",
            f"--exec-root={self.base}/exec",
            f"--pidfile={self.base}/docker.pid",
            f"--host={self.url}",
            "--log-level=warn",
        ]
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            if _ping(self.url):
                return
            time.sleep(0.5)
        tail = self.log.read_text(errors="replace")[-2000:]
        self.stop()
        pytest.fail(f"docker.io is installed but a private dockerd did not start:\n{tail}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.base, ignore_errors=True)


@pytest.fixture(scope="session")
def docker_url() -> Iterator[str | None]:
    """The engine the docker backend talks to (None: the SDK's default)."""
    try:
        import docker  # noqa: F401
    except ImportError:
        pytest.skip("the docker SDK is not installed")
    if _ping(None):
        yield None
        return
    if shutil.which("dockerd") is None:
        pytest.skip("docker backend: no Docker engine is running and dockerd is not installed")
    if os.geteuid() != 0:
        pytest.skip("docker backend: no Docker engine is running and we cannot start one")
    daemon = PrivateDockerd()
    daemon.start()
    try:
        yield daemon.url
    finally:
        daemon.stop()


@pytest.fixture(scope="session")
def docker_image(docker_url: str | None) -> str:
    import docker

    from qlp.sandbox.docker_image import build_image

    client = docker.DockerClient(base_url=docker_url) if docker_url else docker.from_env()
    try:
        build_image(client, runtime_dir(), TEST_IMAGE, slim=True)
    finally:
        client.close()
    return TEST_IMAGE


def make_backend(name: str, request: pytest.FixtureRequest) -> Sandbox:
    runtime = runtime_dir()
    sandbox: Any
    if name == "bubblewrap":
        if shutil.which("bwrap") is None:
            pytest.skip("bubblewrap is not installed (apt-get install bubblewrap)")
        sandbox = BubblewrapSandbox(BubblewrapConfig(runtime=runtime, default_limits=LIMITS))
    elif name == "gvisor":
        if shutil.which("runsc") is None:
            pytest.skip("gVisor is not installed (apt-get install runsc)")
        if os.geteuid() != 0:
            pytest.skip("gVisor's runsc needs root")
        sandbox = GvisorSandbox(GvisorConfig(runtime=runtime, default_limits=LIMITS))
    else:
        url = request.getfixturevalue("docker_url")
        image = request.getfixturevalue("docker_image")
        sandbox = DockerSandbox(
            DockerConfig(
                base_url=url,
                images={"python": image},
                default_limits=LIMITS,
                path=runtime_path(runtime),
            )
        )
    try:
        sandbox.check()
    except SandboxError as exc:
        pytest.fail(f"{name} is installed but unusable: {exc}")
    return sandbox  # type: ignore[no-any-return]


@pytest.fixture(scope="session", params=BACKENDS)
def sandbox(request: pytest.FixtureRequest) -> Iterator[Sandbox]:
    sb = make_backend(request.param, request)
    yield sb
    if isinstance(sb, GvisorSandbox):
        sb.close()
    if isinstance(sb, DockerSandbox):
        # Only this test process's containers: the engine may serve other QLP processes.
        mine = {"label": [LABEL, f"{OWNER_LABEL}={owner_label()}"]}
        with contextlib.suppress(Exception):
            api = sb.client().api
            for c in api.containers(all=True, filters=mine):
                with contextlib.suppress(Exception):
                    api.remove_container(c["Id"], force=True)
            sb.client().close()


@pytest.fixture
def bubblewrap(request: pytest.FixtureRequest) -> Sandbox:
    return make_backend("bubblewrap", request)


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    ws = tmp_path / "ws"
    ws.mkdir()
    return ws


@pytest.fixture
async def session(sandbox: Sandbox, workspace: Path) -> AsyncIterator[SandboxSession]:
    async with sandbox.session(workspace) as s:
        yield s


def host_processes(marker: str) -> list[str]:
    """'pid: cmdline' of this machine's processes (but this one) whose argv holds `marker`."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if marker in cmdline:
            found.append(f"{pid}: {cmdline}")
    return found
