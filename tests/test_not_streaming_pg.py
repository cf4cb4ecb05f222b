"""Replication that silently stops: the replica keeps answering, but replays nothing.

Replica 0's ``primary_conninfo`` points at a closed port (its WAL receiver
stops) while the primary keeps taking writes.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy import text

from routing_db import Router, read_only, routing_sessionmaker
from routing_db.metrics import register_metrics
from routing_db.testing import PostgresCluster

from .conftest import where
from .waiting import until

pytestmark = pytest.mark.slow  # seconds of lag, measured on the real clock


async def served_by(Session: object, reads: int = 20) -> set[int]:
    """The ports that served ``reads`` reads under ``read_only``."""
    ports = set()
    for _ in range(reads):
        async with Session() as session, read_only:  # type: ignore[operator]
            ports.add((await where(session))[0])
    return ports


@pytest.mark.usefixtures("clean")
async def test_a_replica_that_stops_streaming_stops_serving(
    faults: PostgresCluster,
) -> None:
    cluster = faults
    stalled, other = cluster.replicas
    router = Router.from_urls(
        cluster.writer_url,
        cluster.replica_urls,
        monitor_interval=0.2,
        max_lag_seconds=1.0,
    )
    registry = CollectorRegistry()
    register_metrics(router, registry)
    Session = routing_sessionmaker(router)
    name = router.status()[1]["name"]

    def streaming() -> float | None:
        labels = {"engine": name}
        return registry.get_sample_value("routing_db_replica_streaming", labels)

    writing = True

    async def keep_writing() -> None:
        while writing:
            async with Session() as session:
                await session.execute(text("INSERT INTO items (name) VALUES ('w')"))
                await session.commit()
            await asyncio.sleep(0.05)

    async with router:
        # The writer idle (no writes yet): however old the last replayed
        # transaction is, no replica looks lagging.
        idle_until = time.monotonic() + 3
        while time.monotonic() < idle_until:
            await router.poll()
            assert [row["state"] for row in router.status()[1:]] == ["serving"] * 2
        assert streaming() == 1.0

        writer = asyncio.create_task(keep_writing())
        try:
            await cluster.astop_streaming(0)
            await until(lambda: router.status()[1]["state"] == "not_streaming", 5)
            assert streaming() == 0.0
            # Within the lag limit it still serves; past it, it does not.
            await until(lambda: not router.status()[1]["eligible"], 10)
            assert await served_by(Session) == {other.port}

            await cluster.aresume_streaming(0)
            await until(lambda: router.status()[1]["state"] == "serving", 10)
            await until(lambda: router.status()[1]["eligible"], 10)
            assert streaming() == 1.0
            assert await served_by(Session) == {stalled.port, other.port}
        finally:
            writing = False
            await writer


async def test_a_role_without_stats_rights_sees_healthy_standbys_streaming(
    faults: PostgresCluster,
) -> None:
    """An application role without ``pg_read_all_stats`` cannot read the WAL
    receiver's status: no standby is taken for ``not_streaming`` for that,
    and one that really stopped streaming still is."""
    cluster = faults
    cluster.sql(
        cluster.primary,
        "DROP ROLE IF EXISTS app_reader; "
        "CREATE ROLE app_reader LOGIN PASSWORD 'app-pw'",
    )
    cluster.wait_replicated()

    def as_app(url: str) -> str:
        return url.replace("postgres@", "app_reader:app-pw@", 1)

    assert (
        cluster.sql(
            cluster.replicas[0],
            "SET ROLE app_reader; SELECT status IS NULL FROM pg_stat_wal_receiver",
        )
        == "t"
    )  # what the role sees: the receiver's row, without its status
    router = Router.from_urls(
        as_app(cluster.writer_url),
        [as_app(url) for url in cluster.replica_urls],
        monitor_interval=0.2,
    )
    async with router:
        await router.poll()
        assert [row["state"] for row in router.status()[1:]] == ["serving"] * 2
        cluster.stop_streaming(0)
        await until(lambda: router.status()[1]["state"] == "not_streaming")
        assert router.status()[2]["state"] == "serving"
