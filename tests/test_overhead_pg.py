"""Round trips added by read-your-writes, counted by the driver itself.

asyncpg's query logger sees every query sent on a connection; the same
workload runs through a plain ``AsyncSession`` and a ``RoutingSession`` on
the same engines, and the difference is what routing_db adds.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import event, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from routing_db import Router, current_causal_token, read_only, routing_sessionmaker
from routing_db.testing import PostgresCluster

from .models import Item

pytestmark = pytest.mark.usefixtures("clean")


class QueryCount:
    """Queries sent per engine, as asyncpg logs them."""

    def __init__(self, engines: dict[str, AsyncEngine]) -> None:
        self.sent: Counter[str] = Counter()
        for name, engine in engines.items():

            def on_connect(
                dbapi_connection: Any, record: Any, name: str = name
            ) -> None:
                dbapi_connection.driver_connection.add_query_logger(
                    lambda query, name=name: self.sent.update([name])
                )

            event.listen(engine.sync_engine, "connect", on_connect)


@pytest.fixture
async def one_replica(cluster: PostgresCluster) -> AsyncIterator[Router]:
    router = Router.from_urls(cluster.writer_url, cluster.replica_urls[:1])
    try:
        yield router
    finally:
        await router.dispose()


async def test_one_extra_round_trip_per_write_transaction(one_replica: Router) -> None:
    count = QueryCount({"writer": one_replica.writer})
    Session = routing_sessionmaker(one_replica)

    async def plain(n: int) -> None:
        async with AsyncSession(one_replica.writer) as session:
            session.add(Item(name=f"plain{n}"))
            await session.commit()

    async def routed(n: int) -> None:
        async with Session() as session:
            session.add(Item(name=f"routed{n}"))
            await session.commit()

    await plain(-1)  # warm up: connection setup is not per transaction
    await routed(-1)
    count.sent.clear()
    for n in range(5):
        await plain(n)
    plain_sent = count.sent["writer"]
    count.sent.clear()
    for n in range(5):
        await routed(n)
    assert current_causal_token() is not None
    assert count.sent["writer"] - plain_sent == 5  # pg_current_wal_lsn(), once each


async def test_no_extra_round_trip_per_read_when_caught_up(
    one_replica: Router, cluster: PostgresCluster
) -> None:
    replica = one_replica.replicas[0]
    count = QueryCount({"replica": replica})
    Session = routing_sessionmaker(one_replica)
    async with Session() as session:
        session.add(Item(name="seen"))
        await session.commit()
    await cluster.await_replicated()
    # One monitor round caches the replica's position; then no monitor
    # traffic, so only the reads are counted.
    await one_replica.start()
    await one_replica.stop()

    async def plain() -> None:
        async with AsyncSession(replica) as session:
            assert "seen" in set(await session.scalars(select(Item.name)))

    async def routed() -> None:
        async with Session() as session, read_only:
            assert "seen" in set(await session.scalars(select(Item.name)))

    await plain()
    await routed()
    count.sent.clear()
    for _ in range(5):
        await plain()
    plain_sent = count.sent["replica"]
    count.sent.clear()
    for _ in range(5):
        await routed()
    assert current_causal_token() is not None  # these reads carried a floor
    assert count.sent["replica"] == plain_sent
