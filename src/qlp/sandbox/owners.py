"""Which QLP process owns a sandbox resource, and whether that process is still alive.

Cgroups carry their owner's pid in their name, Docker containers an owner label; a QLP that
starts sweeps what dead owners left (their reaper normally removed it already).
"""

from __future__ import annotations

import os
import socket


def pid_alive(pid: int) -> bool:
    """True while a process with this pid exists (one we may not signal counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def owner_label(pid: int | None = None) -> str:
    """`<host>:<pid>` of this process (or of `pid`): a container's owner on a shared engine."""
    return f"{socket.gethostname()}:{pid if pid is not None else os.getpid()}"


def label_owner_dead(label: str) -> bool:
    """Is the owner named by an `owner_label` on this host and gone? Other hosts' owners,
    and labels that are not ours, are never judged dead."""
    host, _, pid = label.rpartition(":")
    return host == socket.gethostname() and pid.isdigit() and not pid_alive(int(pid))
