"""The attack suite: every attack, against every backend on this machine, must fail safely.

Each test asserts the specific way it was stopped (killed_reason, or the errno the kernel
gave), not merely a non-zero exit, and that the host is unchanged. Network attacks aim only
at a listener this test opens on 127.0.0.1: no other address, no DNS.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import stat
import subprocess
import textwrap
from pathlib import Path

import pytest

from qlp.sandbox.base import KilledReason, Sandbox, SandboxSession
from qlp.sandbox.output import TRUNCATION_MARK
from tests.attack.conftest import LIMITS, MiB, runtime_dir

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def py(code: str) -> list[str]:
    return ["python", "-c", textwrap.dedent(code)]


def errno_probe(*parts: str) -> list[str]:
    """Run `body` (which sets `attempts` to a list of (label, callable)) and print, per
    attempt, the errno name it failed with, or "ok" if it succeeded."""
    head = "import errno, json, os\nresults = {}\n"
    tail = textwrap.dedent(
        """
        for label, fn in attempts:
            try:
                fn()
                results[label] = "ok"
            except OSError as exc:
                results[label] = errno.errorcode.get(exc.errno, str(exc.errno))
        print(json.dumps(results))
        """
    )
    body = "".join(textwrap.dedent(part) for part in parts)
    return ["python", "-c", head + body + tail]


LIBC = """
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
def call(fn, *args):
    if fn(*args) == -1:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
"""


# -- network -----------------------------------------------------------------------------
@pytest.fixture
def host_listener() -> socket.socket:
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    srv.setblocking(False)
    yield srv
    srv.close()


def _accepted(srv: socket.socket) -> bool:
    try:
        conn, _ = srv.accept()
    except BlockingIOError:
        return False
    conn.close()
    return True


CONNECT = """
import socket, sys
s = socket.socket()
s.settimeout(3)
try:
    s.connect(("127.0.0.1", int(sys.argv[1])))
    print("CONNECTED")
except OSError as exc:
    print(type(exc).__name__, exc.errno)
"""


async def test_cannot_reach_host_loopback(
    session: SandboxSession, host_listener: socket.socket
) -> None:
    port = host_listener.getsockname()[1]
    result = await session.run(["python", "-c", CONNECT, str(port)])
    assert result.exit_code == 0, result.stderr
    # The sandbox's own loopback has no listener on that port: refused, never connected.
    assert result.stdout.startswith("ConnectionRefusedError"), result.stdout
    assert not _accepted(host_listener)


async def test_loopback_attack_can_fail_when_network_is_shared(
    bubblewrap: Sandbox, workspace: Path, host_listener: socket.socket
) -> None:
    """Control: with the network namespace shared, the same probe does connect."""
    port = host_listener.getsockname()[1]
    async with bubblewrap.session(workspace, network=True) as s:
        result = await s.run(["python", "-c", CONNECT, str(port)])
    assert result.stdout.strip() == "CONNECTED"
    assert _accepted(host_listener)


async def test_only_an_isolated_loopback_interface(session: SandboxSession) -> None:
    result = await session.run(py("import socket; print([n for _, n in socket.if_nameindex()])"))
    assert result.ok, result.stderr
    assert result.stdout.strip() == "['lo']"


# -- reading the host ---------------------------------------------------------------------
async def test_cannot_read_host_secrets(session: SandboxSession) -> None:
    targets = {
        "shadow": "/etc/shadow",
        "checkout": str(REPO / "pyproject.toml"),
        "home": str(Path.home()),
        "qlp_venv": str(REPO / ".venv"),
    }
    result = await session.run(
        errno_probe(
            f"""
            targets = {targets!r}
            def reader(path):
                return lambda: os.listdir(path) if os.path.isdir(path) else open(path).read()
            attempts = [(k, reader(v)) for k, v in targets.items()]
            """
        )
    )
    assert result.ok, result.stderr
    found = json.loads(result.stdout)
    # Not mounted at all: none of these paths exists inside the sandbox.
    assert found["checkout"] == "ENOENT"
    assert found["qlp_venv"] == "ENOENT"
    assert found["home"] == "ENOENT" or Path.home() == Path("/")
    assert found["shadow"] in ("ENOENT", "EACCES")


async def test_parent_environment_does_not_leak(
    session: SandboxSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    canary = "sk-canary-" + secrets.token_hex(8)
    monkeypatch.setenv("QLP_TEST_CANARY", canary)
    monkeypatch.setenv("OPENAI_API_KEY", canary)
    result = await session.run(
        py(
            """
            import os
            out = [repr(sorted(os.environ.items()))]
            for pid in ("1", "self"):
                try:
                    out.append(open(f"/proc/{pid}/environ", "rb").read().decode(errors="replace"))
                except OSError as exc:
                    out.append(f"{pid}: {exc.strerror}")
            print("\\n".join(out))
            """
        ),
        env={"VISIBLE": "yes"},
    )
    assert result.ok, result.stderr
    assert canary not in result.stdout
    assert "QLP_" not in result.stdout
    assert "API_KEY" not in result.stdout
    assert "('VISIBLE', 'yes')" in result.stdout


# -- writing the host ---------------------------------------------------------------------
async def test_cannot_write_outside_workspace(session: SandboxSession) -> None:
    tag = secrets.token_hex(6)
    runtime = runtime_dir()
    paths = {
        "root": f"/qlp-{tag}",
        "etc": f"/etc/qlp-{tag}",
        "usr": f"/usr/qlp-{tag}",
        "runtime": f"{runtime}/qlp-{tag}",
        "dotdot": f"/workspace/../qlp-{tag}",
    }
    result = await session.run(
        errno_probe(
            f"""
            paths = {paths!r}
            def writer(path):
                return lambda: open(path, "w").write("pwned")
            attempts = [(k, writer(v)) for k, v in paths.items()]
            """
        )
    )
    assert result.ok, result.stderr
    found = json.loads(result.stdout)
    assert all(v in ("EROFS", "EACCES") for v in found.values()), found
    for host in (f"/qlp-{tag}", f"/etc/qlp-{tag}", f"/usr/qlp-{tag}", f"{runtime}/qlp-{tag}"):
        assert not os.path.exists(host)


async def test_read_only_binds_stay_read_only(session: SandboxSession) -> None:
    runtime = runtime_dir()
    target = runtime / "pyvenv.cfg"
    before = target.read_bytes()
    result = await session.run(
        errno_probe(
            f"""
            attempts = [
                ("runtime_file", lambda: open({str(target)!r}, "a").write("x")),
                ("usr_file", lambda: open("/usr/bin/python3", "ab").write(b"x")),
                ("runtime_dir", lambda: os.mkdir({str(runtime / "qlp-x")!r})),
                ("chmod", lambda: os.chmod({str(target)!r}, 0o777)),
            ]
            """
        )
    )
    assert result.ok, result.stderr
    found = json.loads(result.stdout)
    assert all(v in ("EROFS", "EACCES", "EPERM") for v in found.values()), found
    assert target.read_bytes() == before


async def test_planted_symlinks_do_not_reach_the_host(
    sandbox: Sandbox, tmp_path: Path, workspace: Path
) -> None:
    secret = tmp_path / "host-secret.txt"
    secret.write_text("host-secret-" + secrets.token_hex(6))
    secret.chmod(0o600)
    (workspace / "to_secret").symlink_to(secret)
    (workspace / "to_shadow").symlink_to("/etc/shadow")
    (workspace / "to_hostdir").symlink_to(tmp_path)
    passwd_before = os.stat("/etc/passwd")
    async with sandbox.session(workspace) as s:
        result = await s.run(
            errno_probe(
                """
                attempts = [
                    ("read_secret", lambda: print(open("/workspace/to_secret").read())),
                    ("read_shadow", lambda: print(open("/workspace/to_shadow").read())),
                    ("write_dir", lambda: open("/workspace/to_hostdir/planted", "w").write("x")),
                    ("plant", lambda: os.symlink("/etc/passwd", "/workspace/to_passwd")),
                ]
                """
            )
        )
    assert result.exit_code == 0, result.stderr
    found = json.loads(result.stdout.strip().splitlines()[-1])
    assert found["read_secret"] == "ENOENT"
    assert found["read_shadow"] in ("ENOENT", "EACCES")
    assert found["write_dir"] == "ENOENT"
    assert secret.read_text() not in result.stdout
    assert not (tmp_path / "planted").exists()
    # Handing the workspace back never follows links: the targets keep their owners.
    assert found["plant"] == "ok"
    assert os.stat("/etc/passwd").st_uid == passwd_before.st_uid
    assert os.stat(secret).st_uid == os.geteuid()
    assert stat.S_IMODE(os.stat(secret).st_mode) == 0o600


# -- resource bombs -----------------------------------------------------------------------
async def test_fork_bomb_is_stopped_by_the_process_limit(session: SandboxSession) -> None:
    result = await session.run(
        py(
            """
            import os
            while True:
                try:
                    os.fork()
                except OSError:
                    pass
            """
        ),
        limits=LIMITS.with_(timeout_s=60, pids=32),
    )
    assert result.killed_reason is KilledReason.PIDS, result
    assert subprocess.run(["true"], check=False).returncode == 0  # the host can still fork


async def test_memory_bomb_is_stopped_by_the_memory_limit(session: SandboxSession) -> None:
    result = await session.run(
        py(
            """
            chunks = []
            while True:
                chunks.append(b"x" * (16 << 20))
            """
        ),
        limits=LIMITS.with_(memory_bytes=128 * MiB),
    )
    assert result.killed_reason is KilledReason.MEMORY, result


async def test_cpu_spin_is_stopped_at_the_deadline(session: SandboxSession) -> None:
    result = await session.run(py("while True: pass"), limits=LIMITS.with_(timeout_s=2, cpu_s=60))
    assert result.killed_reason is KilledReason.TIMEOUT, result
    assert result.wall_s < 30


async def test_cpu_seconds_limit(session: SandboxSession) -> None:
    result = await session.run(py("while True: pass"), limits=LIMITS.with_(timeout_s=60, cpu_s=1))
    assert result.killed_reason is KilledReason.CPU, result


async def test_huge_stdout_is_capped(session: SandboxSession) -> None:
    result = await session.run(
        py(
            """
            import sys
            block = b"x" * (1 << 20)
            for _ in range(100):
                sys.stdout.buffer.write(block)
            """
        ),
        limits=LIMITS.with_(output_bytes=1 * MiB),
    )
    assert result.killed_reason is KilledReason.OUTPUT, result.exit_code
    assert result.stdout_truncated
    marker = TRUNCATION_MARK.format(cap=1 * MiB)
    assert result.stdout.endswith(marker)
    assert len(result.stdout) == 1 * MiB + len(marker)


async def test_file_past_the_size_limit(session: SandboxSession, workspace: Path) -> None:
    result = await session.run(
        ["sh", "-c", "head -c 20000000 /dev/zero > /workspace/big"],
        limits=LIMITS.with_(file_size_bytes=1 * MiB),
    )
    assert result.killed_reason is KilledReason.FILE_SIZE, result
    assert (workspace / "big").stat().st_size <= 1 * MiB


def _host_processes_matching(marker: str) -> list[str]:
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if marker in cmdline:
            found.append(f"{pid}: {cmdline}")
    return found


async def test_double_forked_sleeper_is_gone_after_the_session(
    sandbox: Sandbox, workspace: Path
) -> None:
    marker = f"31{secrets.randbelow(10**6)}.{secrets.randbelow(1000)}"
    async with sandbox.session(workspace) as s:
        result = await s.run(
            py(
                f"""
                import os
                if os.fork() == 0:
                    os.setsid()
                    if os.fork() == 0:
                        os.closerange(0, 3)
                        os.execvp("sleep", ["sleep", "{marker}"])
                    os._exit(0)
                os.wait()
                print("parent done")
                """
            )
        )
        assert result.ok, result.stderr
        assert result.stdout.strip() == "parent done"
    assert _host_processes_matching(marker) == []
    assert _host_processes_matching("qlp-runsc-bundle") == []


async def test_setuid_binary_gains_nothing(session: SandboxSession, workspace: Path) -> None:
    """A setuid-root binary planted (by the host, as root) in the workspace runs unprivileged."""
    if os.geteuid() != 0:
        pytest.skip("planting a setuid-root binary needs root")
    target = workspace / "suid-id"
    shutil.copy("/usr/bin/id", target)
    os.chown(target, 0, 0)
    target.chmod(0o4755 | stat.S_ISGID)
    result = await session.run(["/workspace/suid-id"])
    assert result.ok, result.stderr
    assert "euid=0" not in result.stdout and "egid=0" not in result.stdout
    assert not result.stdout.startswith("uid=0")
    probe = await session.run(
        errno_probe(
            "attempts = [('setuid', lambda: os.setuid(0)), ('setgid', lambda: os.setgid(0))]"
        )
    )
    found = json.loads(probe.stdout)
    # EINVAL where uid 0 does not exist in the sandbox's user namespace at all.
    assert found["setuid"] in ("EPERM", "EINVAL") and found["setgid"] in ("EPERM", "EINVAL")


# -- kernel attack surface -----------------------------------------------------------------
async def test_ptrace_is_denied(session: SandboxSession) -> None:
    result = await session.run(
        errno_probe(
            LIBC,
            """
            attempts = [("traceme", lambda: call(libc.ptrace, 0, 0, 0, 0))]
            """,
        )
    )
    assert json.loads(result.stdout) == {"traceme": "EPERM"}


async def test_nested_user_namespace_is_denied(session: SandboxSession) -> None:
    clone_newuser = 0x10000000
    result = await session.run(
        errno_probe(
            LIBC,
            f"""
            attempts = [
                ("unshare", lambda: call(libc.unshare, {clone_newuser})),
                ("unshare_ns", lambda: call(libc.unshare, 0x00020000)),
            ]
            """,
        )
    )
    assert json.loads(result.stdout) == {"unshare": "EPERM", "unshare_ns": "EPERM"}
    tool = await session.run(["unshare", "-U", "true"])
    assert tool.exit_code == 1
    assert "Operation not permitted" in tool.stderr


async def test_mount_is_denied(session: SandboxSession) -> None:
    result = await session.run(
        errno_probe(
            LIBC,
            """
            attempts = [
                ("mount", lambda: call(libc.mount, b"none", b"/tmp", b"tmpfs", 0, None)),
                ("umount", lambda: call(libc.umount2, b"/workspace", 0)),
            ]
            """,
        )
    )
    assert json.loads(result.stdout) == {"mount": "EPERM", "umount": "EPERM"}


X86_64_DENIED = {
    "bpf": 321,
    "kexec_load": 246,
    "keyctl": 250,
    "perf_event_open": 298,
    "userfaultfd": 323,
    "init_module": 175,
    "open_by_handle_at": 304,
}


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="syscall numbers are x86_64's")
async def test_dangerous_syscalls_are_denied(session: SandboxSession) -> None:
    result = await session.run(
        errno_probe(
            LIBC,
            f"""
            numbers = {X86_64_DENIED!r}
            attempts = [(n, (lambda nr: lambda: call(libc.syscall, nr, 0, 0, 0, 0, 0))(nr))
                        for n, nr in numbers.items()]
            # clone(CLONE_NEWUSER | SIGCHLD): a new user namespace by the other door.
            newuser = lambda: call(libc.syscall, 56, 0x10000011, 0, 0, 0, 0)
            attempts.append(("clone_newuser", newuser))
            """,
        )
    )
    found = json.loads(result.stdout.strip().splitlines()[-1])
    assert found == {name: "EPERM" for name in [*X86_64_DENIED, "clone_newuser"]}


async def test_host_is_healthy_afterwards(sandbox: Sandbox, workspace: Path) -> None:
    """After the bombs: the backend still runs ordinary work, and no cgroup is left over."""
    async with sandbox.session(workspace) as s:
        result = await s.run(py("print(sum(range(10)))"))
    assert result.ok and result.stdout.strip() == "45", result
    leftovers = subprocess.run(
        ["sh", "-c", "find /sys/fs/cgroup -maxdepth 6 -type d -name 'qlp-sbx-*' 2>/dev/null"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.split()
    assert leftovers == []
