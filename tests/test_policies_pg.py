"""Each balancing policy's distribution, as the servers report it."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest

from routing_db import Router, read_only, routing_sessionmaker
from routing_db.testing import PostgresCluster

from .conftest import where


@contextlib.asynccontextmanager
async def routed(cluster: PostgresCluster, **options: Any) -> AsyncIterator[Router]:
    router = Router.from_urls(
        cluster.writer_url, cluster.replica_urls, pool_size=5, **options
    )
    try:
        yield router
    finally:
        await router.dispose()


async def ports_served(router: Router, n: int) -> list[int]:
    Session = routing_sessionmaker(router)
    served = []
    for _ in range(n):
        async with Session() as session, read_only:
            port, standby = await where(session)
            assert standby
            served.append(port)
    return served


async def test_round_robin_alternates(cluster: PostgresCluster) -> None:
    async with routed(cluster, policy="round_robin") as router:
        served = await ports_served(router, 10)
    assert served[0] != served[1]
    assert served == served[:2] * 5


async def test_random_reaches_every_replica(cluster: PostgresCluster) -> None:
    async with routed(cluster, policy="random") as router:
        served = await ports_served(router, 60)
    assert set(served) == {node.port for node in cluster.replicas}


@pytest.mark.parametrize("weights", [(1.0, 0.0), (0.0, 1.0)])
async def test_weighted_follows_the_weights(
    cluster: PostgresCluster, weights: tuple[float, float]
) -> None:
    async with routed(cluster, policy="weighted", weights=weights) as router:
        served = await ports_served(router, 20)
    only = cluster.replicas[weights.index(1.0)].port
    assert set(served) == {only}


async def test_least_busy_avoids_the_busy_replica(
    cluster: PostgresCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with routed(cluster, policy="least_busy") as router:
        # Three connections checked out on replica 0, as slow reads would hold.
        async with contextlib.AsyncExitStack() as stack:
            for _ in range(3):
                await stack.enter_async_context(router.replicas[0].connect())
            served = await ports_served(router, 10)
        assert set(served) == {cluster.replicas[1].port}
        # Those long holds make replica 0 look slow until the measurement
        # ages out; then, idle again, both serve.
        served = await ports_served(router, 4)
        assert set(served) == {cluster.replicas[1].port}
        monkeypatch.setattr("routing_db._replicas.replica_set._LATENCY_TTL", 0.0)
        served = await ports_served(router, 4)
    assert set(served) == {node.port for node in cluster.replicas}
