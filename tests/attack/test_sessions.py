"""What the port promises, on every backend: a session shares one workspace, commands get
exactly the environment they are given, and results say how each command ended."""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from qlp.errors import SandboxError, UserInputError
from qlp.sandbox.base import Sandbox, SandboxSession


async def test_files_persist_across_commands_of_a_session(session: SandboxSession) -> None:
    first = await session.run(["sh", "-c", "mkdir -p pkg && echo 41 > pkg/n.txt"])
    assert first.ok, first.stderr
    second = await session.run(["python", "-c", "print(int(open('pkg/n.txt').read()) + 1)"])
    assert second.ok, second.stderr
    assert second.stdout == "42\n"
    assert (session.workspace / "pkg" / "n.txt").read_text() == "41\n"


async def test_workspace_is_handed_back_to_its_owner(sandbox: Sandbox, workspace: Path) -> None:
    (workspace / "given.txt").write_text("from the host\n")
    owner = os.stat(workspace).st_uid
    async with sandbox.session(workspace) as s:
        result = await s.run(["sh", "-c", "cat given.txt > copy.txt && mkdir made"])
        assert result.ok, result.stderr
    for path in (workspace, workspace / "copy.txt", workspace / "made", workspace / "given.txt"):
        assert os.lstat(path).st_uid == owner
    assert (workspace / "copy.txt").read_text() == "from the host\n"


async def test_exit_code_stdout_and_stderr(session: SandboxSession) -> None:
    result = await session.run(
        ["python", "-c", "import sys; print('out'); print('err', file=sys.stderr); sys.exit(3)"]
    )
    assert (result.exit_code, result.stdout, result.stderr) == (3, "out\n", "err\n")
    assert result.killed_reason is None
    assert not result.ok
    assert result.wall_s > 0


async def test_environment_and_cwd_are_explicit(session: SandboxSession) -> None:
    (session.workspace / "sub").mkdir()
    result = await session.run(
        ["python", "-c", "import os, json; print(json.dumps([os.getcwd(), os.environ['MY']]))"],
        env={"MY": "value"},
        cwd="/workspace/sub",
    )
    assert result.ok, result.stderr
    assert json.loads(result.stdout) == ["/workspace/sub", "value"]


async def test_stdin_is_passed(session: SandboxSession) -> None:
    result = await session.run(
        ["python", "-c", "import sys; print(sys.stdin.read()[::-1])"], stdin=b"abc"
    )
    assert result.stdout == "cba\n"


async def test_pytest_runs_in_the_sandbox(session: SandboxSession) -> None:
    (session.workspace / "test_ok.py").write_text(
        textwrap.dedent(
            """
            def add(a, b):
                return a + b

            def test_add():
                assert add(2, 2) == 4

            def test_fails():
                assert add(2, 2) == 5
            """
        )
    )
    result = await session.run(["python", "-m", "pytest", "-q", "-p", "no:cacheprovider"])
    assert result.exit_code == 1, result.stdout + result.stderr
    assert "1 failed, 1 passed" in result.stdout


async def test_bad_arguments_are_user_errors(session: SandboxSession) -> None:
    with pytest.raises(UserInputError):
        await session.run("python -c pass")  # type: ignore[arg-type]
    with pytest.raises(UserInputError):
        await session.run(["true"], cwd="relative")


async def test_a_closed_session_refuses_work(sandbox: Sandbox, workspace: Path) -> None:
    async with sandbox.session(workspace) as s:
        pass
    with pytest.raises(SandboxError, match="closed"):
        await s.run(["true"])


def test_cli_run_with_bubblewrap(bubblewrap: Sandbox, tmp_path: Path) -> None:
    from qlp.cli.sandbox import app

    (tmp_path / "in.txt").write_text("hello")
    result = CliRunner().invoke(
        app,
        [
            "run",
            "--backend",
            "bubblewrap",
            "--workspace",
            str(tmp_path),
            "--json",
            "--",
            "cat",
            "in.txt",
        ],
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["stdout"] == "hello"
    assert data["backend"] == "bubblewrap"
    killed = CliRunner().invoke(
        app, ["run", "--backend", "bubblewrap", "--timeout", "1", "--", "sleep", "30"]
    )
    assert killed.exit_code == 1
    assert "killed: timeout" in killed.output


async def test_bubblewrap_binds_a_searchable_workspace_directly(bubblewrap: Sandbox) -> None:
    """Workspaces under a private directory are staged (see MountStage); others are not."""
    import shutil
    import tempfile

    from qlp.sandbox.bubblewrap import BubblewrapSession

    ws = Path(tempfile.mkdtemp(prefix="qlp-test-ws-", dir="/tmp"))
    try:
        async with bubblewrap.session(ws) as s:
            assert isinstance(s, BubblewrapSession)
            assert s.stage is None
            result = await s.run(["sh", "-c", "echo direct > f && cat f"])
        assert result.stdout == "direct\n"
    finally:
        shutil.rmtree(ws)


async def test_bubblewrap_stages_a_workspace_under_a_private_directory(
    bubblewrap: Sandbox, tmp_path: Path
) -> None:
    from qlp.sandbox.bubblewrap import BubblewrapSession

    if os.geteuid() != 0:
        pytest.skip("only a dropped uid needs staging")
    private = tmp_path / "private"
    (private / "ws").mkdir(parents=True)
    private.chmod(0o700)
    async with bubblewrap.session(private / "ws") as s:
        assert isinstance(s, BubblewrapSession)
        assert s.stage is not None
        result = await s.run(["sh", "-c", "echo staged > f && cat f"])
        holder = s.stage.proc
    assert result.stdout == "staged\n"
    assert holder is not None and holder.poll() is not None  # the holder is gone


async def test_programs_can_start_threads(session: SandboxSession) -> None:
    """gVisor answered clone3 with EPERM (not the profile's ENOSYS), so the C library never
    fell back to clone and no threaded program (ruff, semgrep, a threaded test) could run."""
    result = await session.run(
        [
            "python",
            "-c",
            "import threading\n"
            "out = []\n"
            "ts = [threading.Thread(target=out.append, args=(i,)) for i in range(4)]\n"
            "[t.start() for t in ts]; [t.join() for t in ts]\n"
            "print(sorted(out))",
        ]
    )
    assert result.ok, result.stderr
    assert result.stdout.strip() == "[0, 1, 2, 3]"


async def test_debian_alternatives_resolve(sandbox: Sandbox, workspace: Path) -> None:
    """awk, which, cc, nodejs... are links through /etc/alternatives; without it they dangle."""
    if sandbox.name == "docker":
        pytest.skip("the docker image carries its own tools, not the host's alternatives")
    if not os.path.isdir("/etc/alternatives") or not os.path.exists("/usr/bin/awk"):
        pytest.skip("this host has no Debian alternatives for awk")
    async with sandbox.session(workspace) as s:
        result = await s.run(["sh", "-c", "awk 'BEGIN { print 6 * 7 }'"])
    assert result.ok, result.stderr
    assert result.stdout == "42\n"
