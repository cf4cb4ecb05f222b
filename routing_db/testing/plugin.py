"""pytest plugin: session-scoped servers (``pg_cluster``, ``mariadb_cluster``,
``pgbouncer``, ``redis_server``, ``patroni_cluster``)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from ._cluster import PostgresCluster
from ._mariadb import MariaDBCluster, find_mariadbd
from ._patroni import PatroniCluster, find_etcd, find_patroni
from ._pgbouncer import PgBouncer, find_pgbouncer
from ._redis import RedisServer, find_redis_server
from ._servers import ClusterError, find_pg_bindir

__all__ = [
    "mariadb_cluster",
    "patroni_cluster",
    "pg_cluster",
    "pgbouncer",
    "redis_server",
]


T = TypeVar("T")


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PostgresCluster]:
    """A PostgreSQL primary + 2 streaming replicas for the whole test session.

    ``ROUTING_DB_TEST_WRITER_URL`` / ``ROUTING_DB_TEST_REPLICA_URLS`` point it at
    servers you run instead; otherwise it starts its own on free loopback ports
    and always stops them (also on failure; an atexit hook covers Ctrl-C).
    """
    external = PostgresCluster.from_env()
    if external is not None:
        yield external
        return
    _require(find_pg_bindir, "PostgreSQL")
    cluster = PostgresCluster.start(replicas=2)
    yield from _serving(cluster, cluster.stop)


@pytest.fixture(scope="session")
def mariadb_cluster() -> Iterator[MariaDBCluster]:
    """A MariaDB primary + 2 GTID replicas for the whole test session.

    Started on free loopback ports in a temporary directory, always stopped.
    """
    _require(find_mariadbd, "MariaDB")
    cluster = MariaDBCluster.start(replicas=2)
    yield from _serving(cluster, cluster.stop)


@pytest.fixture(scope="session")
def pgbouncer(pg_cluster: PostgresCluster) -> Iterator[PgBouncer]:
    """PgBouncer in transaction mode in front of the primary and replica 0.

    Its databases are named ``primary`` and ``replica0``; two server
    connections per database, so transactions of one client connection do
    move between server connections.
    """
    _require(find_pgbouncer, "PgBouncer")
    bouncer = PgBouncer.start(
        {"primary": pg_cluster.primary, "replica0": pg_cluster.replicas[0]},
        pool_size=2,
    )
    yield from _serving(bouncer, bouncer.stop)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A redis-server on a free loopback port for the whole test session."""
    _require(find_redis_server, "Redis")
    server = RedisServer.start()
    yield from _serving(server, server.remove)


@pytest.fixture(scope="session")
def patroni_cluster() -> Iterator[PatroniCluster]:
    """Three PostgreSQL members under Patroni, with etcd, for the whole session."""

    def found() -> Path:
        etcd, patroni = find_etcd(), find_patroni()
        if etcd is None or patroni is None:
            raise ClusterError(
                "Patroni tests need etcd (apt-get install etcd-server) and Patroni "
                "(tools/install-servers installs both)"
            )
        return patroni

    _require(found, "Patroni")
    cluster = PatroniCluster.start()
    yield from _serving(cluster, cluster.stop)


def _serving(server: T, stop: Callable[[], None]) -> Iterator[T]:
    # A session fixture's server: stopped at the end, also on failure.
    try:
        yield server
    finally:
        stop()


def _require(find: Callable[[], Path], server: str) -> None:
    # An optional server that is not installed skips its tests, saying why;
    # under CI (CI=true) it is an error: there, everything must run.
    try:
        find()
    except ClusterError as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"{server} is not installed: {exc}")
