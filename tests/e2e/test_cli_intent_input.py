"""`qlp run -` builds the intent read from standard input, not the literal intent "-"
(issue 11, item 16)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.e2e.test_cli import EXAMPLE, qlp_env


def test_run_dash_reads_the_intent_from_standard_input(tmp_path: Path, db_url: str) -> None:
    intent = (EXAMPLE / "intent.txt").read_text()
    env = qlp_env(tmp_path, db_url, QLP_VALIDATE="false")
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "qlp",
            "run",
            "--json",
            "--llm",
            f"scripted:{EXAMPLE / 'script.json'}",
            "-",
        ],
        input=intent,
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)
    assert data["text"] == intent.strip()  # the pipeline trims the ends
    assert data["status"] == "completed"
