"""Bad input is exit 2 with one line saying what to change, not "a bug in QLP" (issue 11,
item 9): a QLP_HOME that is a file, or under one; an intent that is not UTF-8."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest


def _qlp(*args: str | bytes, home: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("QLP_")}
    env.update(QLP_HOME=str(home), QLP_LLM_PROVIDER="openai", QLP_OPENAI_API_KEY="unused")
    return subprocess.run(
        [sys.executable, "-m", "qlp", *args], env=env, capture_output=True, text=True
    )


@pytest.mark.parametrize("below", ["", "sub"])
def test_a_qlp_home_that_is_a_file_is_bad_configuration(tmp_path: Path, below: str) -> None:
    file = tmp_path / "home"
    file.write_text("not a folder")
    result = _qlp("intents", "list", home=file / below if below else file)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "QLP_HOME" in lines[0] and "is a file, not a folder" in lines[0]
    assert "bug" not in lines[0]


def test_an_intent_that_is_not_utf8_is_bad_input(tmp_path: Path) -> None:
    result = _qlp(b"run", b"build \xff\xfe a thing", home=tmp_path / "home")
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "not valid UTF-8" in lines[0], result.stderr
    assert not (tmp_path / "home" / "postgres").exists()  # refused before anything started


def test_the_max_parallel_cap_error_names_the_flag_that_was_used(tmp_path: Path) -> None:
    result = _qlp("run", "build a thing", "--max-parallel", "300", home=tmp_path / "home")
    assert result.returncode == 2, result.stderr
    assert "--max-parallel" in result.stderr and "256" in result.stderr
    assert "QLP_MAX_PARALLEL_TASKS" not in result.stderr
    assert not (tmp_path / "home" / "postgres").exists()


def test_the_flag_cap_is_the_settings_cap() -> None:
    from qlp.cli.main import run
    from qlp.config import Settings

    caps = [m.le for m in Settings.model_fields["max_parallel_tasks"].metadata if hasattr(m, "le")]
    option = run.__annotations__["max_parallel"]
    assert caps == [256] and "max=256" in option


QLP = (sys.executable, "-m", "qlp")


def test_a_read_only_qlp_home_is_bad_configuration(tmp_path: Path) -> None:
    # A read-only mount (root may write to any folder, whatever its mode, so chmod would
    # test nothing when the tests run as root): bubblewrap binds the folder read-only.
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        pytest.skip("bubblewrap is not installed")
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("QLP_")}
    env.update(QLP_HOME=str(home))
    probe = subprocess.run(
        [bwrap, "--dev-bind", "/", "/", "--ro-bind", str(home), str(home), "true"],
        capture_output=True,
        text=True,
    )
    if probe.returncode != 0:
        pytest.skip(f"bubblewrap cannot make a read-only mount here: {probe.stderr.strip()}")
    result = subprocess.run(
        [bwrap, "--dev-bind", "/", "/", "--ro-bind", str(home), str(home), *QLP, "intents", "list"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "QLP_HOME" in lines[0] and "not writable" in lines[0], lines
    assert list(home.iterdir()) == []
