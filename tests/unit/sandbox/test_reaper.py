"""The reaper, as a real process: it kills at a deadline, lets go when told, ends what is
registered when its owner dies, and is started again when it was killed."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from qlp.sandbox import reaper as reaper_module
from qlp.sandbox.reaper import Reaper

WAIT_S = 30.0  # bounded waits for something that must happen; never a performance claim


def _ended(pidfd: int, within: float = WAIT_S) -> bool:
    return bool(select.select([pidfd], [], [], within)[0])


@pytest.fixture
def sleeper() -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(["sleep", "600"])
    yield proc
    proc.kill()
    proc.wait()


@pytest.fixture
def no_grace(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reaper_module, "GRACE_S", 0.0)


def test_a_process_is_killed_at_its_deadline(
    sleeper: subprocess.Popen[bytes], no_grace: None
) -> None:
    pidfd = os.pidfd_open(sleeper.pid)
    try:
        Reaper.get().watch(timeout_s=0.2, pidfd=pidfd)
        assert _ended(pidfd)
        assert sleeper.wait(timeout=WAIT_S) == -signal.SIGKILL
    finally:
        os.close(pidfd)


def test_a_forgotten_process_is_left_alone(
    sleeper: subprocess.Popen[bytes], no_grace: None
) -> None:
    pidfd = os.pidfd_open(sleeper.pid)
    try:
        token = Reaper.get().watch(timeout_s=0.3, pidfd=pidfd)
        Reaper.get().forget(token)
        assert not _ended(pidfd, within=1.5)
    finally:
        os.close(pidfd)


def test_a_killed_reaper_is_started_again(sleeper: subprocess.Popen[bytes], no_grace: None) -> None:
    reaper = Reaper.get()
    reaper.watch(timeout_s=None)  # make sure one runs
    first = reaper.pid
    assert first is not None
    os.kill(first, signal.SIGKILL)
    deadline = time.monotonic() + WAIT_S
    while reaper._proc is not None and reaper._proc.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    pidfd = os.pidfd_open(sleeper.pid)
    try:
        reaper.watch(timeout_s=0.2, pidfd=pidfd)
        assert reaper.pid not in (None, first)
        assert _ended(pidfd)
    finally:
        os.close(pidfd)


OWNER = textwrap.dedent(
    """
    import os, subprocess, sys
    from qlp.sandbox.reaper import Reaper
    victim = subprocess.Popen(["sleep", "600"], start_new_session=True)
    Reaper.get().watch(timeout_s=None, pidfd=os.pidfd_open(victim.pid))
    print(victim.pid, flush=True)
    sys.stdin.read()  # until the test kills us
    """
)


def test_what_a_dead_owner_registered_is_ended() -> None:
    owner = subprocess.Popen(
        [sys.executable, "-c", OWNER], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    assert owner.stdout is not None
    victim = int(owner.stdout.readline())
    pidfd = os.pidfd_open(victim)
    try:
        assert not _ended(pidfd, within=0.2)
        owner.kill()  # SIGKILL: nothing of the owner's own runs
        owner.wait()
        assert _ended(pidfd)
    finally:
        os.close(pidfd)
        owner.stdin.close()  # type: ignore[union-attr]
        owner.stdout.close()
