"""A server that hangs: every process of it stopped, its sockets left open.

The kernel still completes TCP handshakes into the listen backlog, so new
connections seem to succeed and then wait, as with a hung host.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

from ._servers import PgNode

__all__ = ["hang", "resume"]


def _processes(datadir: Path) -> list[int]:
    """The postmaster's pid first, then its children's (Linux ``/proc``)."""
    try:
        postmaster = int((datadir / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return []
    children = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            # The parent's pid is the field after the parenthesised name.
            stat = (entry / "stat").read_text()
            if int(stat.rsplit(")", 1)[1].split()[1]) == postmaster:
                children.append(int(entry.name))
    return [postmaster, *children]


def _datadir(node: PgNode) -> Path:
    if node.datadir is None:
        raise RuntimeError(f"{node.name} is not a server this harness started")
    return node.datadir


def _signal(node: PgNode, signum: signal.Signals) -> None:
    for pid in _processes(_datadir(node)):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)


def hang(node: PgNode) -> None:
    """Stop (SIGSTOP) the postmaster first, so it forks nothing new, then the rest."""
    pids = _processes(_datadir(node))
    if not pids:
        return
    os.kill(pids[0], signal.SIGSTOP)
    # Its children are listed again once it is stopped: a backend it forked
    # while the first list was read would otherwise serve on, unstopped.
    deadline = time.monotonic() + 5
    while not _stopped(pids[0]) and time.monotonic() < deadline:
        time.sleep(0.001)
    _signal(node, signal.SIGSTOP)


def _stopped(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # gone: it forks nothing either
    return stat.rsplit(")", 1)[1].split()[0] in ("T", "t")


def resume(node: PgNode) -> None:
    """Let every process of ``node`` run again (SIGCONT); harmless if running."""
    _signal(node, signal.SIGCONT)
