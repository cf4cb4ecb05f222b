"""Failover controls of ``PostgresCluster``: promote, follow, rebuild, add a standby.

Functions of the cluster (its methods call them), kept apart from the
cluster's construction and its simpler faults.
"""

from __future__ import annotations

import os
import shutil
from typing import TYPE_CHECKING

from . import _hang as hang
from ._servers import ClusterError, PgNode, free_ports, poll

if TYPE_CHECKING:
    from ._cluster import PostgresCluster

__all__ = [
    "add_standby",
    "follows",
    "heal",
    "in_recovery",
    "promote",
    "rebuild",
    "repoint",
    "restart_in_recovery",
    "streams_from",
]


def in_recovery(cluster: PostgresCluster, node: PgNode) -> bool:
    """Is ``node`` a standby (``pg_is_in_recovery()``)?"""
    return cluster.sql(node, "SELECT pg_is_in_recovery()", timeout=10) == "t"


def streams_from(cluster: PostgresCluster, source: PgNode, node: PgNode) -> bool:
    """Does ``node`` stream WAL from ``source`` right now?"""
    query = (
        "SELECT count(*) FROM pg_stat_replication "
        f"WHERE application_name = '{node.name}' AND state = 'streaming'"
    )
    return cluster.sql(source, query, timeout=10) == "1"


def promote(cluster: PostgresCluster, node: PgNode) -> None:
    """``pg_ctl promote`` ``node`` and wait until it accepts writes."""
    cluster._pg_ctl(node, "promote")
    poll(
        f"{node.name} to accept writes",
        lambda: not in_recovery(cluster, node),
        60,
        0.02,
    )


def _conninfo(source: PgNode) -> str:
    return f"host={source.host} port={source.port} user={source.user}"


def repoint(cluster: PostgresCluster, node: PgNode, source: PgNode) -> None:
    """Make standby ``node`` stream from ``source``; rebuild it if it cannot.

    ``primary_conninfo`` is changed with ``ALTER SYSTEM`` and a reload; the
    standby follows ``source``'s new timeline (``recovery_target_timeline``
    is ``latest``). One that replayed past the point where ``source`` forked
    off cannot follow: it is rewound instead.
    """
    if _replayed_past_fork(cluster, source, node):
        rebuild(cluster, node, source)
        return
    try:
        cluster.sql(node, f"ALTER SYSTEM SET primary_conninfo = '{_conninfo(source)}'")
        cluster.sql(node, "SELECT pg_reload_conf()")
        poll(
            f"{node.name} to follow {source.name}'s timeline",
            lambda: follows(cluster, source, node),
            15,
            0.05,
        )
    except ClusterError:
        rebuild(cluster, node, source)


def _replayed_past_fork(cluster: PostgresCluster, source: PgNode, node: PgNode) -> bool:
    # The fork point is the last line of source's timeline history file.
    walfile = cluster.sql(source, "SELECT pg_walfile_name(pg_current_wal_lsn())")
    timeline = walfile[:8]
    if int(timeline, 16) == 1:
        return False  # never promoted: nothing forked off
    history = cluster.sql(source, f"SELECT pg_read_file('pg_wal/{timeline}.history')")
    fork = history.splitlines()[-1].split()[1]
    query = f"SELECT pg_last_wal_replay_lsn() > '{fork}'::pg_lsn"
    return cluster.sql(node, query) == "t"


def follows(cluster: PostgresCluster, source: PgNode, node: PgNode) -> bool:
    """Does ``node`` stream ``source``'s current timeline?

    A standby that replayed past the point where ``source`` forked off may
    still connect and stream for a moment, but never receives that timeline.
    """
    walfile = cluster.sql(source, "SELECT pg_walfile_name(pg_current_wal_lsn())")
    received = cluster.sql(
        node, "SELECT coalesce(max(received_tli), 0) FROM pg_stat_wal_receiver"
    )
    return int(received) == int(walfile[:8], 16) and streams_from(cluster, source, node)


def rebuild(cluster: PostgresCluster, node: PgNode, source: PgNode) -> None:
    """Make ``node`` a standby of ``source``: ``pg_rewind``, else a new base backup."""
    assert node.datadir is not None
    if cluster.is_running(node):
        cluster._pg_ctl(node, "stop", "-m", "fast")
    try:
        # -R: standby.signal and source's primary_conninfo; pg_rewind first
        # runs crash recovery itself when the node was not shut down cleanly.
        cluster._run(
            "pg_rewind", "-D", str(node.datadir), "-R", "--no-sync",
            "--source-server", f"{_conninfo(source)} dbname={source.dbname}",
        )  # fmt: skip
    except ClusterError:
        shutil.rmtree(node.datadir, ignore_errors=True)
        cluster._clone_replica(node, source)
    else:
        cluster._standby_conf(node)  # the source's configuration was copied
    cluster._start_node(node)
    poll(
        f"{node.name} to stream from {source.name}",
        lambda: streams_from(cluster, source, node),
        60,
        0.05,
    )


def restart_in_recovery(cluster: PostgresCluster, node: PgNode, source: PgNode) -> None:
    """Restart ``node`` in recovery under ``source``, not rewound: as an HA
    manager restarts a demoted primary before ``pg_rewind`` (Patroni's
    ``starting``). If it wrote past the point where ``source`` forked off, it
    holds what the cluster threw away and never follows ``source``."""
    assert node.datadir is not None
    if cluster.is_running(node):
        cluster._pg_ctl(node, "stop", "-m", "fast")
    signal = node.datadir / "standby.signal"
    signal.touch()
    shutil.copymode(node.datadir / "postgresql.conf", signal)
    owner = node.datadir.stat()
    os.chown(signal, owner.st_uid, owner.st_gid)
    cluster._conf(node, primary_conninfo=_conninfo(source))
    cluster._start_node(node)
    poll(f"{node.name} to start in recovery", lambda: in_recovery(cluster, node), 60)


def add_standby(cluster: PostgresCluster) -> PgNode:
    """Start a new standby of the node taking writes; return it once it streams."""
    basedir = cluster._basedir
    if basedir is None:
        raise ClusterError("add_standby needs a cluster started by this process")
    (port,) = free_ports(1)
    name = f"replica{len(cluster.replicas)}"
    node = PgNode(name, "127.0.0.1", port, datadir=basedir / name)
    source = cluster.current_primary
    cluster._clone_replica(node, source)
    cluster._start_node(node)
    poll(f"{name} to stream", lambda: streams_from(cluster, source, node), 60, 0.05)
    return node


def heal(cluster: PostgresCluster, *, original_replicas: int) -> None:
    """Put the primary back in charge and the original standbys under it."""
    primary, replicas = cluster.primary, cluster.replicas
    if cluster.owned:
        for node in (primary, *replicas):
            hang.resume(node)
            if not cluster.is_running(node):
                cluster._start_node(node)
    for index, node in enumerate(replicas):
        if in_recovery(cluster, node):
            cluster.resume_replay(index)
    writer = cluster.current_primary
    if writer is not primary:  # after a failover: switch back
        rebuild(cluster, primary, writer)
        cluster.wait_replicated([primary])
        cluster._pg_ctl(writer, "stop", "-m", "fast")  # sends all its WAL first
        promote(cluster, primary)
        rebuild(cluster, writer, primary)
    for node in replicas[:original_replicas]:
        if not in_recovery(cluster, node):  # a second primary: its writes go
            rebuild(cluster, node, primary)
        elif not streams_from(cluster, primary, node):
            repoint(cluster, node, primary)
    for node in replicas[original_replicas:]:
        cluster._pg_ctl(node, "stop", "-m", "immediate")
        assert node.datadir is not None
        shutil.rmtree(node.datadir, ignore_errors=True)
