from __future__ import annotations

import signal

import pytest

from qlp.errors import UserInputError
from qlp.sandbox.base import ExecResult, KilledReason, Limits, check_argv, merged_env
from qlp.sandbox.output import TRUNCATION_MARK, CappedBuffer
from qlp.sandbox.rlimits import classify, prlimit_argv


def test_capped_buffer_keeps_the_head_and_marks_the_cut() -> None:
    buf = CappedBuffer(10)
    assert buf.feed(b"12345")
    assert not buf.feed(b"67890ABC")
    assert not buf.feed(b"more")
    assert buf.truncated
    assert buf.text() == "1234567890" + TRUNCATION_MARK.format(cap=10)


def test_capped_buffer_exactly_full_is_not_truncated() -> None:
    buf = CappedBuffer(4)
    assert buf.feed(b"abcd")
    assert buf.text() == "abcd"
    assert not buf.truncated


def test_capped_buffer_decodes_invalid_utf8_safely() -> None:
    buf = CappedBuffer(100)
    buf.feed(b"ok \xff\xfe")
    assert buf.text().startswith("ok ")


def test_limits_reject_nonsense() -> None:
    with pytest.raises(UserInputError, match="timeout_s"):
        Limits(timeout_s=0)
    with pytest.raises(UserInputError, match="memory_bytes"):
        Limits(memory_bytes=1024)
    assert Limits().with_(pids=9).pids == 9


def test_environment_is_explicit() -> None:
    env = merged_env({"A": "1"}, "/x/bin")
    assert env["PATH"] == "/x/bin"
    assert env["A"] == "1"
    assert "QLP_HOME" not in env
    with pytest.raises(UserInputError):
        merged_env({"BAD=NAME": "x"}, "/bin")


def test_argv_must_be_a_list_of_text() -> None:
    with pytest.raises(UserInputError):
        check_argv("python -c pass")
    with pytest.raises(UserInputError):
        check_argv([])
    assert check_argv(["a", "b"]) == ("a", "b")


def test_prlimit_argv_uses_nproc_as_backstop_with_a_cgroup() -> None:
    lim = Limits(pids=50, cpu_s=7, file_size_bytes=4096, open_files=64, memory_bytes=64 << 20)
    with_cg = prlimit_argv(lim, cgroup=True)
    assert "--cpu=7:8" in with_cg
    assert "--fsize=4096:4096" in with_cg
    assert "--nproc=116:116" in with_cg
    assert not any(a.startswith("--as=") for a in with_cg)
    without = prlimit_argv(lim, cgroup=False)
    assert "--nproc=50:50" in without
    assert f"--as={64 << 20}:{64 << 20}" in without
    assert without[-1] == "--"


@pytest.mark.parametrize(
    ("code", "kwargs", "expected"),
    [
        (0, {}, (None, None)),
        (3, {}, (None, None)),
        (137, {"killed": KilledReason.TIMEOUT}, (KilledReason.TIMEOUT, 9)),
        (137, {"oom_kills": 1}, (KilledReason.MEMORY, 9)),
        (1, {"pids_refused": 3}, (KilledReason.PIDS, None)),
        (0, {"pids_refused": 3}, (None, None)),
        (128 + signal.SIGXCPU, {}, (KilledReason.CPU, signal.SIGXCPU)),
        (128 + signal.SIGXFSZ, {}, (KilledReason.FILE_SIZE, signal.SIGXFSZ)),
        (137, {"cpu_s": 5.0}, (KilledReason.CPU, 9)),
        (128 + signal.SIGSEGV, {}, (KilledReason.SIGNAL, signal.SIGSEGV)),
    ],
)
def test_classify(code: int, kwargs: dict[str, object], expected: object) -> None:
    assert classify(code, limits=Limits(cpu_s=5), **kwargs) == expected  # type: ignore[arg-type]


def test_exec_result_to_dict() -> None:
    result = ExecResult(
        argv=("x",),
        exit_code=137,
        stdout="",
        stderr="",
        wall_s=1.0,
        backend="bubblewrap",
        killed_reason=KilledReason.OUTPUT,
        signal=9,
    )
    data = result.to_dict()
    assert data["killed_reason"] == "output"
    assert data["ok"] is False
    assert data["argv"] == ["x"]
