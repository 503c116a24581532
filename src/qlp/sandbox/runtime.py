"""The runtime environment: the interpreters and test tools that sandboxed code may use.

It is a virtual environment built from the system's /usr/bin/python3 (so every file it needs
is under /usr or inside the environment), made world-readable by `scripts/setup`: at
/opt/qlp-runtime when set up as root, else under QLP_HOME. Sandboxes bind it read-only at
the same path and put its bin/ first on PATH. QLP's own virtual environment is never
mounted: it may live under a private home, and it holds QLP, not the code under test.
"""

from __future__ import annotations

import os
from pathlib import Path

from qlp.errors import SandboxError

SYSTEM_RUNTIME = Path("/opt/qlp-runtime")
SYSTEM_PATH = "/usr/local/bin:/usr/bin:/bin"


def resolve_runtime(configured: Path | None, home: Path) -> Path:
    if configured is not None:
        return configured
    if SYSTEM_RUNTIME.is_dir():
        return SYSTEM_RUNTIME
    return home / "runtime"


def runtime_path(runtime: Path) -> str:
    return f"{runtime}/bin:{SYSTEM_PATH}"


def check_runtime(runtime: Path, *, need_under_usr: bool, other_uid: bool) -> None:
    """The environment exists and its interpreter resolves to a file the sandbox can see."""
    python = runtime / "bin" / "python"
    hint = "run scripts/setup, which creates it (or set QLP_SANDBOX_RUNTIME)"
    if not python.exists():
        raise SandboxError(f"sandbox runtime environment not found at {runtime}: {hint}")
    target = Path(os.path.realpath(python))
    if need_under_usr and not (
        target.is_relative_to("/usr") or target.is_relative_to(runtime.resolve())
    ):
        raise SandboxError(
            f"the sandbox runtime at {runtime} uses {target}, which the sandbox cannot see; "
            f"recreate it from /usr/bin/python3 ({hint})"
        )
    for part in [runtime, *runtime.parents] if other_uid else []:
        if part == Path("/"):
            break
        if not os.stat(part).st_mode & 0o001:
            raise SandboxError(
                f"the sandbox runtime at {runtime} is not reachable by other users "
                f"({part} is not world-searchable); {hint}"
            )
