"""Nothing of a sandbox outlives its command, its deadline or the QLP process that owns it.

The attacks: a command that takes over bubblewrap's PID 1 through /proc/1/mem (same uid, no
Yama) so that it clears its parent-death signal and never reports the command's end; a
daemon left behind by a command; a CPU spin whose owner is SIGKILLed. Each test checks only
what its own run created (its marker, its own child's pid), never the machine as a whole.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from qlp.sandbox.base import Sandbox
from qlp.sandbox.bubblewrap import BubblewrapConfig, BubblewrapSandbox
from qlp.sandbox.docker_backend import LABEL, OWNER_LABEL
from qlp.sandbox.owners import owner_label
from tests.attack.conftest import LIMITS, host_processes, runtime_dir

pytestmark = pytest.mark.slow
BOUNDED_WAIT_S = 60.0  # how long the checks below poll; never a performance claim


def _marker() -> str:
    return f"{secrets.randbelow(10**6) + 10**6}.{secrets.randbelow(1000)}"


def _kill_leftovers(marker: str) -> None:
    for line in host_processes(marker):
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(line.split(":")[0]), signal.SIGKILL)


@pytest.fixture
def shared_workspace() -> Iterator[Path]:
    """A workspace other uids can reach (tmp_path's parents may be private)."""
    ws = Path(tempfile.mkdtemp(prefix="qlp-lifetime-"))
    ws.chmod(0o755)
    try:
        yield ws
    finally:
        subprocess.run(["rm", "-rf", str(ws)], check=False)


DAEMON = """
import os, sys
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        os.closerange(0, 3)
        os.execvp("sleep", ["sleep", sys.argv[1]])
    os._exit(0)
os.wait()
"""

# The daemon above, then PID 1 (bwrap's init, blocked in wait4) taken over: the code written
# at the address its syscall returns to clears its parent-death signal and pauses for ever,
# so it never reports the command's end and would keep the daemon's namespace alive.
HIJACK_PID1 = (
    DAEMON
    + """
try:
    fields = open("/proc/1/syscall").read().split()
    pc = int(fields[-1], 16)
    code = bytes.fromhex("b89d000000" "bf01000000" "31f6" "0f05" "b822000000" "0f05" "ebf7")
    with open("/proc/1/mem", "r+b", buffering=0) as mem:
        mem.seek(pc)
        mem.write(code)
    print("hijacked", flush=True)
except OSError as exc:
    print("refused", exc.errno, flush=True)
"""
)


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="the injected code is x86_64's")
@pytest.mark.parametrize("cgroups", ["off", "auto"])
async def test_hijacked_pid1_does_not_outlive_its_command(
    cgroups: str, shared_workspace: Path
) -> None:
    if not Path("/usr/bin/bwrap").exists():
        pytest.skip("bubblewrap is not installed")
    sandbox = BubblewrapSandbox(
        BubblewrapConfig(runtime=runtime_dir(), default_limits=LIMITS, cgroups=cgroups)  # type: ignore[arg-type]
    )
    marker = _marker()
    try:
        async with sandbox.session(shared_workspace) as s:
            result = await s.run(
                ["python", "-c", HIJACK_PID1, marker], limits=LIMITS.with_(timeout_s=5)
            )
        # PID 1 no longer says when the command ended, so it ends at its deadline.
        assert result.stdout.startswith(("hijacked", "refused")), result
        assert host_processes(marker) == [], "a sandbox process outlived its command"
    finally:
        _kill_leftovers(marker)


async def test_nothing_of_a_command_outlives_it(sandbox: Sandbox, shared_workspace: Path) -> None:
    """A daemon a command leaves is gone when the command returns: seen from the host, and
    from the next command of the same session (gVisor's processes are not host processes)."""
    marker = _marker()
    try:
        async with sandbox.session(shared_workspace) as s:
            first = await s.run(["python", "-c", DAEMON, marker])
            assert first.ok, first.stderr
            assert host_processes(marker) == []
            look = await s.run(
                [
                    "python",
                    "-c",
                    "import os, sys\n"
                    "marker = sys.stdin.buffer.read()\n"
                    "for p in filter(str.isdigit, os.listdir('/proc')):\n"
                    "    try:\n"
                    "        c = open(f'/proc/{p}/cmdline', 'rb').read()\n"
                    "    except OSError:\n"
                    "        continue\n"
                    "    if marker in c:\n"
                    "        print(p, c)\n",
                ],
                stdin=marker.encode(),  # in no process's argv but the daemon's
            )
            assert look.ok, look.stderr
            assert look.stdout == ""
    finally:
        _kill_leftovers(marker)


async def test_pid1_of_a_docker_sandbox_is_not_the_commands_to_write(
    shared_workspace: Path, request: pytest.FixtureRequest
) -> None:
    from tests.attack.conftest import make_backend

    sandbox = make_backend("docker", request)
    async with sandbox.session(shared_workspace) as s:
        result = await s.run(
            [
                "python",
                "-c",
                "import errno\ntry:\n    open('/proc/1/mem', 'r+b')\n    print('ok')\n"
                "except OSError as exc:\n    print(errno.errorcode[exc.errno])",
            ]
        )
    assert result.ok, result.stderr
    assert result.stdout.strip() in ("EACCES", "EPERM")


# A QLP process that runs one CPU spin in a sandbox and is then SIGKILLed by the test.
OWNER = """
import asyncio, json, os
from pathlib import Path
from qlp.sandbox.base import Limits
cfg = json.loads(os.environ["QLP_TEST_OWNER"])
def backend():
    runtime = Path(cfg["runtime"])
    if cfg["backend"] == "bubblewrap":
        from qlp.sandbox.bubblewrap import BubblewrapConfig, BubblewrapSandbox
        return BubblewrapSandbox(BubblewrapConfig(runtime=runtime, cgroups=cfg["cgroups"]))
    if cfg["backend"] == "gvisor":
        from qlp.sandbox.gvisor import GvisorConfig, GvisorSandbox
        return GvisorSandbox(GvisorConfig(runtime=runtime))
    from qlp.sandbox.docker_backend import DockerConfig, DockerSandbox
    from qlp.sandbox.runtime import runtime_path
    return DockerSandbox(DockerConfig(base_url=cfg["url"], images={"python": cfg["image"]},
                                      path=runtime_path(runtime)))
async def main():
    sb = backend()
    sb.check()
    spin = "open('/workspace/started', 'w').close()\\nwhile True: pass"
    async with sb.session(Path(cfg["workspace"])) as s:
        await s.run(["python", "-c", spin, cfg["marker"]],
                    limits=Limits(timeout_s=cfg["timeout_s"], cpu_s=600))
asyncio.run(main())
"""


def _owned_cgroups(pid: int) -> list[str]:
    pattern = re.compile(rf"^qlp-sbx-[a-z]+-{pid}-[0-9a-f]{{8}}$")
    found = []
    for root, dirs, _ in os.walk("/sys/fs/cgroup"):
        found += [os.path.join(root, d) for d in dirs if pattern.match(d)]
        if root.count("/") > 8:
            dirs[:] = []
    return found


def _owned_containers(request: pytest.FixtureRequest, pid: int) -> list[str]:
    import docker

    url = request.getfixturevalue("docker_url")
    client = docker.DockerClient(base_url=url) if url else docker.from_env()
    try:
        # The low-level list: the high-level one inspects each container, and one being
        # removed meanwhile answers 404.
        mine = {"label": [LABEL, f"{OWNER_LABEL}={owner_label(pid)}"]}
        return [c["Id"] for c in client.api.containers(all=True, filters=mine)]
    finally:
        client.close()


def _start_owner(
    backend: str, request: pytest.FixtureRequest, workspace: Path, marker: str, timeout_s: float
) -> subprocess.Popen[bytes]:
    cfg = {
        "backend": backend,
        "runtime": str(runtime_dir()),
        "workspace": str(workspace),
        "marker": marker,
        "timeout_s": timeout_s,
        "cgroups": "auto",
    }
    if backend == "docker":
        cfg["url"] = request.getfixturevalue("docker_url")
        cfg["image"] = request.getfixturevalue("docker_image")
    proc = subprocess.Popen(
        [sys.executable, "-c", OWNER],
        env={**os.environ, "QLP_TEST_OWNER": json.dumps(cfg)},  # not in argv: no marker there
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + BOUNDED_WAIT_S
    while not (workspace / "started").exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            _, err = proc.communicate()
            pytest.fail(f"the owner process did not start its sandbox: {err.decode()[-2000:]}")
        time.sleep(0.1)
    return proc


def _gone(check: object, what: str) -> None:
    assert callable(check)
    deadline = time.monotonic() + BOUNDED_WAIT_S
    left = check()
    while left and time.monotonic() < deadline:
        time.sleep(0.2)
        left = check()
    assert not left, f"{what} still there {BOUNDED_WAIT_S:.0f}s later: {left}"


@pytest.mark.parametrize("backend", ["bubblewrap", "docker", "gvisor"])
def test_a_sandbox_ends_with_the_qlp_process_that_owns_it(
    backend: str, request: pytest.FixtureRequest, shared_workspace: Path
) -> None:
    """The owner is SIGKILLed mid-command (no cleanup of its own runs): its reaper ends the
    sandbox, long before the command's own 600 s deadline."""
    from tests.attack.conftest import make_backend

    make_backend(backend, request)  # skips when the backend is not on this machine
    marker = _marker()
    owner = _start_owner(backend, request, shared_workspace, marker, timeout_s=600)
    try:
        if backend != "gvisor":  # gVisor's processes are its own kernel's, not the host's
            assert host_processes(marker), "the spin is not running"
        cgroups = _owned_cgroups(owner.pid)
        if backend == "gvisor":
            assert cgroups, "the gVisor sandbox's cgroup is not there"
        owner.kill()
        owner.wait()
        _gone(lambda: host_processes(marker), "the sandboxed spin")
        _gone(lambda: [c for c in cgroups if os.path.exists(c)], "the sandbox's cgroups")
        if backend == "docker":
            _gone(lambda: _owned_containers(request, owner.pid), "the session's container")
    finally:
        if owner.poll() is None:
            owner.kill()
        owner.communicate()
        _kill_leftovers(marker)


def test_the_reaper_keeps_the_deadline_when_qlp_cannot(
    request: pytest.FixtureRequest, shared_workspace: Path
) -> None:
    """The owner is frozen (SIGSTOP: its event loop cannot keep the 2 s deadline); the reaper
    kills the command a grace period later, while the owner still lives."""
    from tests.attack.conftest import make_backend

    make_backend("bubblewrap", request)
    marker = _marker()
    owner = _start_owner("bubblewrap", request, shared_workspace, marker, timeout_s=2)
    try:
        owner.send_signal(signal.SIGSTOP)
        assert host_processes(marker)
        _gone(lambda: host_processes(marker), "the spin past its deadline")
        assert owner.poll() is None  # the owner did not do it: it is stopped
    finally:
        owner.send_signal(signal.SIGCONT)
        owner.kill()
        owner.communicate()
        _kill_leftovers(marker)


def test_containers_a_dead_owner_left_are_swept_at_the_next_start(
    request: pytest.FixtureRequest,
) -> None:
    """QLP and its reaper killed together leave the container; the next QLP's check removes
    it, and leaves alone one whose owner lives (another QLP on the same engine)."""
    import docker

    from qlp.sandbox.docker_backend import DockerConfig, DockerSandbox

    url = request.getfixturevalue("docker_url")
    image = request.getfixturevalue("docker_image")
    client = docker.DockerClient(base_url=url) if url else docker.from_env()
    gone = subprocess.Popen(["true"])
    gone.wait()
    made = []
    try:
        for owner in (owner_label(gone.pid), owner_label()):
            c = client.containers.create(
                image, ["sleep", "600"], labels={LABEL: "1", OWNER_LABEL: owner}
            )
            made.append(c.id)
        sandbox = DockerSandbox(DockerConfig(base_url=url, images={"python": image}))
        sandbox.check()
        left = {c["Id"] for c in client.api.containers(all=True, filters={"label": LABEL})}
        assert made[0] not in left, "the dead owner's container is still there"
        assert made[1] in left, "a live owner's container was removed"
    finally:
        for cid in made:
            with contextlib.suppress(Exception):
                client.api.remove_container(cid, force=True)
        client.close()
