"""Owner labels: a container is judged abandoned only when its owner is on this host and gone."""

from __future__ import annotations

import os
import socket
import subprocess

from qlp.sandbox.owners import label_owner_dead, owner_label, pid_alive


def test_a_live_owner_on_this_host_is_not_dead() -> None:
    assert owner_label() == f"{socket.gethostname()}:{os.getpid()}"
    assert not label_owner_dead(owner_label())
    assert pid_alive(os.getpid())


def test_a_finished_process_is_a_dead_owner() -> None:
    gone = subprocess.Popen(["true"])
    gone.wait()
    assert not pid_alive(gone.pid)
    assert label_owner_dead(owner_label(gone.pid))


def test_other_hosts_and_strange_labels_are_never_dead() -> None:
    gone = subprocess.Popen(["true"])
    gone.wait()
    assert not label_owner_dead(f"another-host-{os.getpid()}:{gone.pid}")
    for label in ("", "1", f"{socket.gethostname()}:", f"{socket.gethostname()}:x"):
        assert not label_owner_dead(label)
