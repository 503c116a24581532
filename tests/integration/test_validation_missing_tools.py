"""A sandbox whose runtime has none of the analysers: every check that needs one says
"not run" with what to install, and the required ones block, never a silent skip."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from qlp.domain.findings import CheckStatus
from qlp.sandbox.bubblewrap import BubblewrapConfig, BubblewrapSandbox
from qlp.validation import DEFAULT_REQUIRED_CHECKS, ValidationConfig, validate


@pytest.fixture(scope="module")
def bare_runtime() -> Iterator[Path]:
    """A runtime with Python and nothing else (world-readable, as the sandbox uid needs)."""
    # Not under /tmp: the sandbox mounts its own private /tmp over it.
    base = Path(tempfile.mkdtemp(prefix="qlp-bare-runtime-", dir="/var/tmp"))
    try:
        base.chmod(0o755)
        runtime = base / "rt"
        subprocess.run(
            ["/usr/bin/python3", "-m", "venv", "--without-pip", str(runtime)], check=True
        )
        for root, dirs, _ in os.walk(base):
            for d in dirs:
                Path(root, d).chmod(0o755)
        yield runtime
    finally:
        shutil.rmtree(base, ignore_errors=True)


async def test_missing_tools_are_reported_not_run(bare_runtime: Path, tmp_path: Path) -> None:
    if shutil.which("bwrap") is None:
        pytest.skip("bubblewrap is not installed (apt-get install bubblewrap)")
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "app.py").write_text("def f():\n    return 1\n")
    (ws / "test_app.py").write_text("from app import f\n\n\ndef test_f():\n    assert f() == 1\n")
    (ws / "main.tf").write_text('resource "x" "y" {\n  a = 1\n}\n')
    (ws / "conf.yaml").write_text("a: 1\n")
    (ws / "README.md").write_text("# App\n")
    sandbox = BubblewrapSandbox(BubblewrapConfig(runtime=bare_runtime))
    sandbox.check()
    async with sandbox.session(ws) as session:
        report = await validate(session, ws, config=ValidationConfig())
    expect_missing = {
        "python.ruff": "ruff",
        "python.bandit": "bandit",
        "python.pytest": "pytest",
        "semgrep": "semgrep",
        "terraform.checkov": "checkov",
        "terraform.parse": "hcl2",
        "data.yaml": "yaml",
    }
    for name, tool in expect_missing.items():
        check = report.check(name)
        assert check is not None
        assert check.status == CheckStatus.NOT_RUN, (name, check.status, check.detail)
        assert check.not_run_reason is not None
        assert f"`{tool}`" in check.not_run_reason
        assert "scripts/setup" in check.not_run_reason
        assert name in report.not_run
    # What the sandbox can do without the runtime's packages still runs.
    compile_check = report.check("python.compile")
    assert compile_check is not None and compile_check.status == CheckStatus.PASSED
    assert report.check("docs").status == CheckStatus.PASSED  # type: ignore[union-attr]
    blocking = report.blocking(DEFAULT_REQUIRED_CHECKS)
    assert set(expect_missing) <= set(blocking)
    # Nothing of the security dimension ran: it is n/a, not a default number.
    assert report.scores.security is None
    assert report.tests_ok is None
