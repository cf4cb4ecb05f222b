"""Test helpers: throwaway PostgreSQL and MariaDB primaries with replicas.

Enable the pytest fixtures with ``-p routing_db.testing.plugin`` (or
``pytest_plugins = ["routing_db.testing.plugin"]`` in a top-level conftest).
"""

from ._cluster import ClusterError, PgNode, PostgresCluster, find_pg_bindir
from ._mariadb import MariaDBCluster, MariaDBNode, find_mariadbd

__all__ = [
    "ClusterError",
    "MariaDBCluster",
    "MariaDBNode",
    "PgNode",
    "PostgresCluster",
    "find_mariadbd",
    "find_pg_bindir",
]
