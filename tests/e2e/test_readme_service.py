"""The README's "Run it as a service" session, run by bash exactly as the README writes it."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.api_support import free_port
from tests.e2e.test_cli import EXAMPLE, ROOT, qlp_env


def readme_block(section: str) -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    start = text.index(f"\n## {section}\n")
    found = re.compile(r"^```bash\n(.*?)^```$", re.S | re.M).search(text, start)
    assert found, f"no bash block in the README section {section!r}"
    return found.group(1)


def _stop_group(pgid: int) -> None:
    """The session's `qlp serve` is in bash's process group: let it finish, then make sure."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)
        for _ in range(300):
            os.killpg(pgid, 0)
            time.sleep(0.1)
        os.killpg(pgid, signal.SIGKILL)


def test_the_service_session_in_the_readme_ends_with_a_verified_capsule(
    tmp_path: Path, db_url: str
) -> None:
    block = readme_block("Run it as a service")
    assert "PORT=${PORT:-8000}" in block
    work = tmp_path / "work"
    shutil.copytree(EXAMPLE, work / "examples" / EXAMPLE.name)
    env = qlp_env(tmp_path, db_url, PORT=str(free_port()))
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"  # qlp
    script = tmp_path / "session.sh"
    script.write_text(block, encoding="utf-8")
    proc = subprocess.Popen(
        ["bash", "-euo", "pipefail", str(script)],
        cwd=work,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate("a long demo password\n", timeout=600)
    finally:
        _stop_group(proc.pid)
    assert proc.returncode == 0, f"stdout:\n{out}\nstderr:\n{err}"
    lines = out.strip().splitlines()
    assert re.search(r"^intent QLI-\w+ is completed$", out, re.M), out
    assert "capsule.ready" in lines, out
    assert lines[-1] == "true", out  # the capsule verified
    assert (work / "todo.qlcapsule").stat().st_size > 1000
    assert "listening on http://127.0.0.1:" in out  # what qlp serve said when ready
