"""Failover controls of ``MariaDBCluster``: promote a replica, repoint another.

Functions of the cluster (its methods call them). MariaDB has no rewind: a
replica that applied more of the old primary than the promoted one cannot
follow it, and ``heal`` cannot undo a failover (start a new cluster).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._servers import ClusterError, poll

if TYPE_CHECKING:
    from ._mariadb import MariaDBCluster, MariaDBNode

__all__ = ["follow", "promote", "takes_writes"]


def takes_writes(cluster: MariaDBCluster, node: MariaDBNode) -> bool:
    """Is ``node`` writable (``@@global.read_only = 0``)?"""
    return cluster.sql(node, "SELECT @@global.read_only", timeout=10) == "0"


def _status(cluster: MariaDBCluster, node: MariaDBNode) -> dict[str, str]:
    out = cluster.sql(node, "SHOW SLAVE STATUS\\G", names=True)
    fields = (line.strip().partition(":") for line in out.splitlines())
    status = {key: value.strip() for key, colon, value in fields if colon}
    if not status:
        raise ClusterError(f"{node.name} is not a replica")
    return status


def _applied(cluster: MariaDBCluster, node: MariaDBNode) -> bool:
    """Has ``node`` executed all it received from its primary?"""
    status = _status(cluster, node)
    return status.get("Master_Log_File") == status.get(
        "Relay_Master_Log_File"
    ) and status.get("Read_Master_Log_Pos") == status.get("Exec_Master_Log_Pos")


def promote(cluster: MariaDBCluster, node: MariaDBNode) -> None:
    """Make replica ``node`` the primary once it applied all it received."""
    cluster.sql(node, "STOP SLAVE IO_THREAD")
    poll(
        f"{node.name} to apply its relay log", lambda: _applied(cluster, node), 60, 0.05
    )
    cluster.sql(node, "STOP SLAVE; RESET SLAVE ALL; SET GLOBAL read_only = 0")


def follow(cluster: MariaDBCluster, node: MariaDBNode, source: MariaDBNode) -> None:
    """Make replica ``node`` replicate from ``source`` by GTID (slave_pos)."""
    cluster.sql(
        node,
        f"STOP SLAVE; CHANGE MASTER TO MASTER_HOST='127.0.0.1', "
        f"MASTER_PORT={source.port}, MASTER_USE_GTID=slave_pos; START SLAVE",
    )
    target = cluster.sql(source, "SELECT @@global.gtid_binlog_pos")

    def applied() -> bool:
        status = _status(cluster, node)
        if status.get("Last_IO_Error"):
            raise ClusterError(
                f"{node.name} cannot follow {source.name} (it may have applied "
                f"more than {source.name} has): {status['Last_IO_Error']}"
            )
        query = f"SELECT MASTER_GTID_WAIT('{target}', 0)"
        return status.get("Slave_IO_Running") == "Yes" and (
            cluster.sql(node, query) == "0"
        )

    poll(f"{node.name} to follow {source.name}", applied, 60, 0.05)
