"""A quick proof that a backend works and isolates: used by `qlp sandbox check`."""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from qlp.errors import QLPError
from qlp.sandbox.base import BASE_ENV, Sandbox

PROBE = r"""
import ctypes, errno, json, os, socket, threading
libc = ctypes.CDLL(None, use_errno=True)
rc = libc.ptrace(0, 0, 0, 0)
ran = []
try:
    t = threading.Thread(target=ran.append, args=(1,))
    t.start()
    t.join()
    threads = "ok" if ran else "did not run"
except RuntimeError as exc:
    threads = str(exc)
try:
    socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM).close()
    vsock = "opened"
except OSError as exc:
    vsock = errno.errorcode.get(exc.errno, str(exc.errno))
print(json.dumps({
    "threads": threads,
    "vsock": vsock,
    "uid": os.getuid(),
    "cwd": os.getcwd(),
    "interfaces": [name for _, name in socket.if_nameindex()],
    "env": sorted(os.environ),
    "ptrace": [rc, ctypes.get_errno()],
    "shadow": os.path.exists("/etc/shadow"),
    "note": open("/workspace/note.txt").read(),
}))
"""


YAMA = Path("/proc/sys/kernel/yama/ptrace_scope")
YAMA_SCOPES = {
    "0": "Yama scope 0 (classic: a process may trace or write any process of its own uid)",
    "1": "Yama scope 1 (restricted: only descendants may be traced)",
    "2": "Yama scope 2 (admin-only attach)",
    "3": "Yama scope 3 (no attach at all)",
}


def ptrace_policy(yama: Path = YAMA) -> str:
    """What the host allows one process to do to another's memory (ptrace, /proc/PID/mem).
    Sandboxes refuse ptrace with seccomp, but /proc/PID/mem goes by this policy alone."""
    try:
        scope = yama.read_text().strip()
    except OSError:
        return (
            "no Yama: a process may write the memory of any process of its own uid through "
            "/proc/PID/mem (QLP does not rely on it: a sandbox's PID 1 is killed by pidfd when "
            "its command ends)"
        )
    return YAMA_SCOPES.get(scope, f"Yama scope {scope}")


@dataclass
class Check:
    name: str
    ok: bool
    detail: str = ""


@dataclass
class SelfTest:
    backend: str
    checks: list[Check] = field(default_factory=list)
    seconds: float = 0.0
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and all(c.ok for c in self.checks)

    def to_dict(self) -> dict[str, object]:
        return {
            "backend": self.backend,
            "ok": self.ok,
            "error": self.error,
            "seconds": round(self.seconds, 3),
            "checks": [c.__dict__ for c in self.checks],
        }


async def self_test(sandbox: Sandbox) -> SelfTest:
    report = SelfTest(sandbox.name)
    started = time.monotonic()
    workspace = Path(tempfile.mkdtemp(prefix="qlp-selftest-"))
    try:
        async with sandbox.session(workspace) as session:
            first = await session.run(["sh", "-c", "echo hello > /workspace/note.txt"])
            report.checks.append(
                Check("workspace is writable", first.ok, first.stderr.strip()[-200:])
            )
            second = await session.run(["python", "-c", PROBE])
            if not second.ok:
                report.checks.append(
                    Check("python runs", False, (second.stderr or second.stdout).strip()[-300:])
                )
            else:
                data = json.loads(second.stdout)
                allowed = set(BASE_ENV) | {"PATH", "PWD", "HOSTNAME"}
                extra = sorted(set(data["env"]) - allowed)
                report.checks += [
                    Check("python runs", True),
                    Check("runs as a non-root user", data["uid"] != 0, f"uid {data['uid']}"),
                    Check(
                        "files persist across commands",
                        data["note"] == "hello\n",
                        repr(data["note"]),
                    ),
                    Check(
                        "no network but an isolated loopback",
                        set(data["interfaces"]) <= {"lo"},
                        ", ".join(data["interfaces"]),
                    ),
                    Check("host environment does not leak", not extra, ", ".join(extra)),
                    Check(
                        "ptrace is refused",
                        data["ptrace"][0] == -1,
                        f"ptrace returned {data['ptrace'][0]} errno {data['ptrace'][1]}",
                    ),
                    Check("host /etc/shadow is not visible", not data["shadow"]),
                    Check(
                        "programs can start threads",
                        data["threads"] == "ok",
                        f"starting a thread failed: {data['threads']}",
                    ),
                    Check(
                        "vsock sockets are refused",
                        data["vsock"] == "EPERM",
                        f"socket(AF_VSOCK) gave {data['vsock']}",
                    ),
                ]
    except QLPError as exc:
        report.error = exc.message
    finally:
        shutil.rmtree(workspace, ignore_errors=True)
        report.seconds = time.monotonic() - started
    return report
