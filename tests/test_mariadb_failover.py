"""A MariaDB failover under load, through ``Router.from_cluster``.

The test starts a cluster of its own: MariaDB has no rewind, so a failover
cannot be undone for the next test.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from routing_db import (
    Router,
    routing_sessionmaker,
)
from routing_db.testing import MariaDBCluster

from .test_failover_under_load_pg import (
    Load,
    check_write_errors,
    fail_over,
    reader,
    wait_for,
    writer,
)
from .test_hung_primary_pg import RETRY, begun_after, writes_across_a_hung_primary

pytestmark = [pytest.mark.mariadb, pytest.mark.slow]

SERVER = text("SELECT @@server_id")


@pytest.fixture
def own(mariadb_cluster: MariaDBCluster) -> Iterator[MariaDBCluster]:
    """A new cluster (the session's one shows MariaDB is installed)."""
    cluster = MariaDBCluster.start(replicas=2)
    try:
        yield cluster
    finally:
        cluster.stop()


def cluster_router(cluster: MariaDBCluster, **options: Any) -> Router:
    """The writes' table made; a router over the nodes: old, new, other."""
    old, (new, other) = cluster.primary, cluster.replicas
    cluster.sql(old, "CREATE TABLE app.failover_writes (k varchar(40) PRIMARY KEY)")
    cluster.wait_replicated()
    return Router.from_cluster(
        [node.url_for() for node in (old, new, other)],
        names=["old", "new", "other"],
        monitor_interval=0.2,
        **options,
    )


async def test_a_mariadb_failover_under_load(own: MariaDBCluster) -> None:
    cluster = own
    new, other = cluster.replicas
    router = cluster_router(cluster, writer_wait_timeout=10)
    Session = routing_sessionmaker(router)
    load = Load()
    async with router:
        tasks = [asyncio.create_task(writer(Session, load, i)) for i in range(5)]
        tasks += [asyncio.create_task(reader(Session, load, SERVER)) for _ in range(10)]
        try:
            await wait_for(lambda: len(load.acked) >= 50, 30)
            failover = await fail_over(cluster, load)
            assert {row["name"]: row["role"] for row in router.status()}["new"] == (
                "writer"
            )
            await wait_for(lambda: load.reads.get(other.server_id, 0) > 0, 5)
        finally:
            load.running = False
            await asyncio.gather(*tasks)

    present = set(cluster.sql(new, "SELECT k FROM app.failover_writes").split())
    # Begun once the old primary was surely dead: on the new one.
    assert begun_after(load.sent, failover.crash_done) <= present
    check_write_errors(load, failover)
    assert load.read_errors == []
    assert load.longest < 12


async def add(session: AsyncSession, key: str) -> None:
    await session.execute(
        text("INSERT INTO app.failover_writes (k) VALUES (:k)"), {"k": key}
    )


async def test_writes_in_flight_on_a_hung_primary_move_to_the_promoted_one(
    own: MariaDBCluster,
) -> None:
    """The primary hangs (SIGSTOP), a replica is promoted: the writes in flight
    on the hung host are cut once the new primary is found."""
    cluster = own
    router = cluster_router(
        cluster, connect_timeout=2.0, writer_wait_timeout=30, retry=RETRY
    )
    began, hung = await writes_across_a_hung_primary(cluster, router, add)
    assert {row["name"]: row["role"] for row in router.status()}["new"] == "writer"
    new = cluster.replicas[0]
    present = set(cluster.sql(new, "SELECT k FROM app.failover_writes").split())
    assert begun_after(began, hung) <= present
