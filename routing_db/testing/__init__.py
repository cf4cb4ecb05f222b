"""Test helpers: throwaway PostgreSQL and MariaDB primaries with replicas,
PgBouncer, Redis, a Patroni cluster, and a reader endpoint (``Balancer``) in
front of standbys.

Enable the pytest fixtures with ``-p routing_db.testing.plugin`` (or
``pytest_plugins = ["routing_db.testing.plugin"]`` in a top-level conftest).
"""

from ._balancer import Balancer
from ._cluster import ClusterError, PgNode, PostgresCluster, find_pg_bindir
from ._faults import ReplicatedCluster
from ._mariadb import MariaDBCluster, MariaDBNode, find_mariadbd
from ._patroni import PatroniCluster, PatroniMember, find_etcd, find_patroni
from ._pgbouncer import PgBouncer, find_pgbouncer
from ._redis import RedisServer, find_redis_server

__all__ = [
    "Balancer",
    "ClusterError",
    "MariaDBCluster",
    "MariaDBNode",
    "PatroniCluster",
    "PatroniMember",
    "PgBouncer",
    "PgNode",
    "PostgresCluster",
    "RedisServer",
    "ReplicatedCluster",
    "find_etcd",
    "find_mariadbd",
    "find_patroni",
    "find_pg_bindir",
    "find_pgbouncer",
    "find_redis_server",
]
