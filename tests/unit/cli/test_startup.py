"""`qlp --help` and `qlp version` start fast because the CLI imports nothing heavy until a
command needs it (issue 11, item 5; bench/cli_startup.py times it, this checks it)."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("openai", "anthropic", "azure", "fastapi", "sqlalchemy", "alembic", "docker")


def _loaded_after(code: str) -> set[str]:
    probe = (
        f"import json, sys\n{code}\n"
        f"print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}})))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], check=True, capture_output=True, text=True
    ).stdout
    return set(json.loads(out.splitlines()[-1]))


def test_importing_the_cli_loads_no_sdk_database_or_web_framework() -> None:
    loaded = _loaded_after("import qlp.cli.main")
    assert loaded.isdisjoint(HEAVY), sorted(loaded & set(HEAVY))


def test_help_and_version_load_none_of_them_either() -> None:
    for argv in (["--help"], ["version"]):
        code = (
            "from qlp.cli.main import app\n"
            "try:\n"
            f"    app({argv!r}, standalone_mode=False)\n"
            "except SystemExit:\n"
            "    pass"
        )
        loaded = _loaded_after(code)
        assert loaded.isdisjoint(HEAVY), (argv, sorted(loaded & set(HEAVY)))
