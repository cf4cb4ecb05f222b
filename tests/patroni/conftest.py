"""The Patroni suite (``make test-patroni``, its own CI step): every test
here is marked ``patroni``, which ``make test`` leaves out."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from routing_db.testing import PatroniCluster

from .load import DDL


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test of this folder ``patroni``."""
    for item in items:
        if "tests/patroni/" in str(item.fspath).replace("\\", "/"):
            item.add_marker(pytest.mark.patroni)


@pytest.fixture
def patroni(patroni_cluster: PatroniCluster) -> Iterator[PatroniCluster]:
    """The cluster with an empty table, every member streaming; healed after."""
    cluster = patroni_cluster
    leader = cluster.leader()
    assert leader is not None
    cluster.sql(leader, f"{DDL}; TRUNCATE pat_items")
    cluster.wait_streaming()
    try:
        yield cluster
    finally:
        cluster.heal()


@pytest.fixture(scope="session")
def haproxy(patroni_cluster: PatroniCluster) -> Iterator[PatroniCluster]:
    """HAProxy in front of the cluster, as Patroni documents it (the leader's
    port and the replicas' port, checked on Patroni's REST API)."""
    patroni_cluster.start_haproxy()
    try:
        yield patroni_cluster
    finally:
        patroni_cluster.stop_haproxy()
