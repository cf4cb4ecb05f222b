"""The load generator and the servers on separate cores, for a capacity run.

A load test runs its client apart from the system it measures. On one
machine the nearest thing is a core each: left to the scheduler, the client
and the servers take turns on both cores and the client, which needs a whole
core at 5 ms per read, loses a few percent of it to the switching.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from routing_db.testing import PostgresCluster

__all__ = ["separate_cores"]


def _children(parent: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            # pid (comm) state ppid ...: comm may hold spaces, so split after ")".
            if int(stat.rsplit(")", 1)[1].split()[1]) == parent:
                found.append(int(entry.name))
    return found


def _server_pids(cluster: PostgresCluster) -> list[int]:
    pids = []
    for node in (cluster.primary, *cluster.replicas):
        assert node.datadir is not None
        postmaster = int((node.datadir / "postmaster.pid").read_text().split()[0])
        pids += [postmaster, *_children(postmaster)]
    return pids


def _set(pids: list[int], cpus: set[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):  # a backend that just ended
            os.sched_setaffinity(pid, cpus)


@contextlib.contextmanager
def separate_cores(cluster: PostgresCluster) -> Iterator[str]:
    """Pin this process to all cores but the last and the cluster to the last.

    Yields how it pinned, for the report. Backends forked later inherit their
    postmaster's core. Unpinned (and says so) on one core, or where the
    cluster is not ours or the OS has no affinity call.
    """
    if not hasattr(os, "sched_setaffinity") or not cluster.owned:
        yield "Client and servers were not pinned (not our cluster, or no affinity)"
        return
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        yield "Client and servers were not pinned (one core)"
        return
    client, servers = set(cpus[:-1]), {cpus[-1]}
    try:
        _set(_server_pids(cluster), servers)
        os.sched_setaffinity(0, client)
    except OSError as exc:  # a container may forbid it: measure unpinned
        _unpin(cluster, cpus)
        yield f"Client and servers were not pinned ({exc.strerror})"
        return
    try:
        cores = ", ".join(map(str, sorted(client)))
        yield f"The client ran on core {cores} and the servers on core {cpus[-1]}"
    finally:
        _unpin(cluster, cpus)


def _unpin(cluster: PostgresCluster, cpus: list[int]) -> None:
    with contextlib.suppress(OSError):
        os.sched_setaffinity(0, set(cpus))
    with contextlib.suppress(OSError):
        _set(_server_pids(cluster), set(cpus))
