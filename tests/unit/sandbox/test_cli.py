from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from qlp.cli.sandbox import app, parse_size
from qlp.errors import UserInputError

runner = CliRunner()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("512M", 512 << 20),
        ("2G", 2 << 30),
        ("64k", 64 << 10),
        ("300", 300 << 20),
        ("1GiB", 1 << 30),
    ],
)
def test_parse_size(text: str, expected: int) -> None:
    assert parse_size(text) == expected


def test_parse_size_rejects_garbage() -> None:
    with pytest.raises(UserInputError):
        parse_size("lots")


def test_unknown_backend_is_bad_input() -> None:
    result = runner.invoke(app, ["run", "--backend", "chroot", "--", "true"])
    assert result.exit_code == 2
    assert "bubblewrap, docker, gvisor" in result.output


def test_bad_timeout_is_bad_input() -> None:
    result = runner.invoke(app, ["run", "--timeout", "0", "--", "true"])
    assert result.exit_code == 2


def test_unknown_configured_backend_fails_at_startup(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QLP_SANDBOX", "unsandboxed")
    result = runner.invoke(app, ["run", "--", "true"])
    assert result.exit_code == 2
    assert "QLP_SANDBOX" in result.output


def test_check_fails_when_the_configured_backend_is_unusable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("QLP_SANDBOX_RUNTIME", "/nonexistent/qlp-runtime")
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    result = runner.invoke(app, ["check", "--json"])
    assert result.exit_code == 1
    assert "configured sandbox (bubblewrap) is not usable" in result.output
    assert "scripts/setup" in result.output


def test_ptrace_policy_says_what_the_host_allows(tmp_path: Path) -> None:
    from qlp.sandbox.selftest import ptrace_policy

    assert ptrace_policy(tmp_path / "absent").startswith("no Yama")
    scope = tmp_path / "ptrace_scope"
    scope.write_text("1\n")
    assert "restricted" in ptrace_policy(scope)
    scope.write_text("7\n")
    assert ptrace_policy(scope) == "Yama scope 7"
