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
import signal
import socket
import stat
import subprocess
import textwrap
from pathlib import Path

import pytest

from qlp.sandbox.base import KilledReason, Sandbox, SandboxSession
from qlp.sandbox.output import TRUNCATION_MARK
from tests.attack.conftest import LIMITS, MiB, host_processes, runtime_dir

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


SOCKET_FAMILIES = """
import socket
families = {
    "vsock": (socket.AF_VSOCK, socket.SOCK_STREAM),
    "packet": (socket.AF_PACKET, socket.SOCK_RAW),
    "alg": (38, socket.SOCK_SEQPACKET),
    "bluetooth": (31, socket.SOCK_STREAM),
    "rds": (21, socket.SOCK_SEQPACKET),
    "unix": (socket.AF_UNIX, socket.SOCK_STREAM),
    "inet": (socket.AF_INET, socket.SOCK_STREAM),
    "inet6": (socket.AF_INET6, socket.SOCK_STREAM),
    "netlink": (socket.AF_NETLINK, socket.SOCK_DGRAM),
}
def opener(family, kind):
    return lambda: socket.socket(family, kind).close()
attempts = [(name, opener(*args)) for name, args in families.items()]
# socketpair is the other door to a socket; the family's upper half is ignored by the kernel.
attempts.append(("vsock_pair", lambda: socket.socketpair(socket.AF_VSOCK)))
attempts.append(
    ("vsock_high_bits", lambda: call(libc.syscall, 41, (1 << 32) | socket.AF_VSOCK, 1, 0))
)
"""


async def test_only_allowed_socket_families(session: SandboxSession) -> None:
    """vsock ignores network namespaces: a sandbox could listen on the host's vsock ports or
    reach the hypervisor. Only AF_UNIX, AF_INET, AF_INET6 and AF_NETLINK may be opened."""
    result = await session.run(errno_probe(LIBC, SOCKET_FAMILIES))
    assert result.ok, result.stderr
    found = json.loads(result.stdout)
    allowed = {"unix", "inet", "inet6", "netlink"}
    assert {k for k, v in found.items() if v == "ok"} == allowed, found
    assert all(v == "EPERM" for k, v in found.items() if k not in allowed), found


# i386's socketcall(SYS_SOCKET, [AF_VSOCK, SOCK_STREAM, 0]) by `int 0x80`: the one way to make
# a socket whose family a filter on socket(2) does not see. The machine code runs from a page
# below 4 GiB (MAP_32BIT) that also holds the arguments; it returns eax to Python.
SOCKETCALL = r"""
import ctypes, mmap, struct, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                      ctypes.c_int, ctypes.c_long]
MAP_32BIT = 0x40
page = libc.mmap(None, 4096, 7, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | MAP_32BIT, -1, 0)
args = page + 256
ctypes.memmove(args, struct.pack("<III", 40, 1, 0), 12)
code = (b"\x53"                                   # push rbx
        b"\xb8\x66\x00\x00\x00"                   # mov eax, 102 (socketcall)
        b"\xbb\x01\x00\x00\x00"                   # mov ebx, 1 (SYS_SOCKET)
        b"\xb9" + struct.pack("<I", args) +       # mov ecx, args
        b"\xcd\x80"                               # int 0x80
        b"\x5b\xc3")                              # pop rbx; ret
ctypes.memmove(page, code, len(code))
fn = ctypes.CFUNCTYPE(ctypes.c_int)(page)
ret = fn()
# A runtime may read eax as a 64-bit call instead (gVisor: 102 is getuid): only a socket
# descriptor of the vsock family would be a success.
import os, socket, stat
try:
    is_sock = ret >= 0 and stat.S_ISSOCK(os.fstat(ret).st_mode)
except OSError:
    is_sock = False
family = socket.socket(fileno=os.dup(ret)).family if is_sock else None
print("returned", ret, int(family) if family is not None else "no-socket", flush=True)
"""


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="i386 entry is x86_64's")
async def test_i386_socketcall_cannot_open_vsock(session: SandboxSession) -> None:
    result = await session.run(["python", "-c", SOCKETCALL])
    # Killed by the filter (SIGSYS) or refused: never a socket (a descriptor >= 0).
    if result.stdout.startswith("returned"):
        assert result.stdout.split()[2] != "40", result.stdout
    else:
        assert result.signal == signal.SIGSYS, result


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


FILL_TMPFS = """
import errno, json, os, sys
report = {}
for top in ("/tmp", "/dev/shm"):
    total, n, error = 0, 0, None
    block = b"x" * (1 << 20)
    while error is None and total < (4 << 30):
        try:
            with open(f"{top}/fill-{n}", "wb") as fh:  # files under the file-size limit
                for _ in range(4):
                    fh.write(block)
                    fh.flush()
                    total += len(block)
        except OSError as exc:
            error = errno.errorcode.get(exc.errno, str(exc.errno))
        n += 1
    report[top] = [total, error]
    for i in range(n):
        try:
            os.unlink(f"{top}/fill-{i}")
        except OSError:
            pass
print(json.dumps(report))
"""


async def _fill_tmpfs(session: SandboxSession) -> dict[str, list[object]]:
    result = await session.run(
        ["python", "-c", FILL_TMPFS], limits=LIMITS.with_(memory_bytes=256 * MiB, timeout_s=60)
    )
    assert result.ok, result
    report: dict[str, list[object]] = json.loads(result.stdout)
    return report


async def test_tmpfs_mounts_are_bounded_by_the_memory_limit(session: SandboxSession) -> None:
    """/tmp and /dev/shm are memory: together they stay within the memory limit (256 MiB)."""
    report = await _fill_tmpfs(session)
    assert report["/tmp"][1] == "ENOSPC" and report["/dev/shm"][1] == "ENOSPC", report
    assert int(report["/tmp"][0]) + int(report["/dev/shm"][0]) <= 256 * MiB, report  # type: ignore[call-overload]


async def test_tmpfs_is_bounded_without_cgroups_too(workspace: Path) -> None:
    """rlimits-only mode: RLIMIT_AS does not count tmpfs pages, the mount's size does."""
    from qlp.sandbox.bubblewrap import BubblewrapConfig, BubblewrapSandbox

    if shutil.which("bwrap") is None:
        pytest.skip("bubblewrap is not installed")
    sandbox = BubblewrapSandbox(
        BubblewrapConfig(runtime=runtime_dir(), default_limits=LIMITS, cgroups="off")
    )
    async with sandbox.session(workspace) as s:
        report = await _fill_tmpfs(s)
    assert report["/tmp"][1] == "ENOSPC" and report["/dev/shm"][1] == "ENOSPC", report
    assert int(report["/tmp"][0]) + int(report["/dev/shm"][0]) <= 256 * MiB, report  # type: ignore[call-overload]


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
    # (gVisor's processes are not host processes: test_lifetime.py checks its cgroups.)
    assert host_processes(marker) == []


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
    """After the bombs: the backend still runs ordinary work, and no cgroup of this test
    process is left over (other QLP processes on the machine may hold cgroups of their own;
    the owner's pid is in each name)."""
    async with sandbox.session(workspace) as s:
        result = await s.run(py("print(sum(range(10)))"))
    assert result.ok and result.stdout.strip() == "45", result
    mine = f"qlp-sbx-*-{os.getpid()}-*"
    leftovers = subprocess.run(
        ["find", "/sys/fs/cgroup", "-maxdepth", "6", "-type", "d", "-name", mine],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.split()
    assert leftovers == []
