"""Test helpers: a throwaway PostgreSQL primary + streaming replicas.

Enable the pytest fixtures with ``-p routing_db.testing.plugin`` (or
``pytest_plugins = ["routing_db.testing.plugin"]`` in a top-level conftest).
"""

from ._cluster import ClusterError, PgNode, PostgresCluster, find_pg_bindir

__all__ = ["ClusterError", "PgNode", "PostgresCluster", "find_pg_bindir"]
