"""Two databases in one request, and a blue/green switch: a causal floor per
cluster (issue J, section 1), on two real PostgreSQL clusters."""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import func, select, text

from routing_db import (
    Router,
    causal_token,
    current_causal_token,
    read_only,
    routing_sessionmaker,
)
from routing_db.testing import PostgresCluster

from .models import Item, ddl
from .routers import RouterMaker
from .waiting import until

WHERE = text("SELECT inet_server_port(), pg_is_in_recovery()")


@pytest.fixture(scope="module")
def other_cluster(schema: PostgresCluster) -> Iterator[PostgresCluster]:
    """A second cluster (its own system_identifier), far behind the first in
    WAL: a floor compared across clusters would keep its reads on its writer."""
    if not schema.owned:
        pytest.skip("a second cluster needs servers started by this test run")
    for _ in range(2):  # the first cluster's position well past the second's
        schema.sql(schema.primary, "CREATE TABLE IF NOT EXISTS wal_filler (n int)")
        schema.sql(schema.primary, "INSERT INTO wal_filler VALUES (1)")
        schema.sql(schema.primary, "SELECT pg_switch_wal()")
    schema.wait_replicated()
    other = PostgresCluster.start(replicas=1)
    try:
        other.sql(other.primary, ddl())
        other.wait_replicated()
        yield other
    finally:
        other.stop()


@pytest.fixture
def clusters(
    faults: PostgresCluster, other_cluster: PostgresCluster
) -> Iterator[tuple[PostgresCluster, PostgresCluster]]:
    """Both clusters, for the current driver, their items empty; the second
    healed afterwards."""
    other = other_cluster.with_driver(faults.driver)
    for cluster in (faults, other):
        cluster.sql(cluster.primary, "TRUNCATE items RESTART IDENTITY")
        cluster.wait_replicated()
    try:
        yield faults, other
    finally:
        other.heal()


@pytest.fixture
async def routers(
    clusters: tuple[PostgresCluster, PostgresCluster], make_router: RouterMaker
) -> tuple[Router, Router]:
    first, second = clusters
    a = make_router(first.writer_url, first.replica_urls, sticky_seconds=1.0)
    b = make_router(second.writer_url, second.replica_urls, sticky_seconds=1.0)
    await a.start()
    await b.start()
    return a, b


async def _where(Session: Any, name: str | None = None) -> tuple[bool, int | None]:
    """(served by a standby, rows named ``name``) for one read_only read."""
    async with Session() as session, read_only:
        _, standby = (await session.execute(WHERE)).one()
        found = None
        if name is not None:
            found = await session.scalar(select(func.count()).where(Item.name == name))
    return bool(standby), found


async def test_a_write_to_one_database_keeps_the_other_on_its_replicas(
    clusters: tuple[PostgresCluster, PostgresCluster], routers: tuple[Router, Router]
) -> None:
    second = clusters[1]
    A = routing_sessionmaker(routers[0])
    B = routing_sessionmaker(routers[1])

    async def request() -> list[tuple[bool, int | None]]:
        async with A() as session:
            session.add(Item(name="tenant-write"))
            await session.commit()
        seen = [await _where(B)]  # the other database: its replica serves
        # Its own writes are still read back: replay paused on its standby.
        second.pause_replay(0)
        async with B() as session:
            session.add(Item(name="shared-write"))
            await session.commit()
        seen.append(await _where(B, "shared-write"))
        seen.append(await _where(A, "tenant-write"))
        return seen

    seen = await asyncio.create_task(request(), context=contextvars.Context())
    on_b, b_own, a_own = seen
    assert on_b == (True, None)
    assert b_own == (False, 1)  # its standby has not replayed it: the writer
    assert a_own[1] == 1


async def test_a_token_of_another_cluster_is_safe_and_not_a_pin(
    clusters: tuple[PostgresCluster, PostgresCluster], routers: tuple[Router, Router]
) -> None:
    A = routing_sessionmaker(routers[0])
    B = routing_sessionmaker(routers[1])

    async def wrote_on_a() -> str | None:
        async with A() as session:
            session.add(Item(name="blue"))
            await session.commit()
        return current_causal_token()

    token = await asyncio.create_task(wrote_on_a(), context=contextvars.Context())
    assert token is not None

    async def after_the_switch() -> bool:
        with causal_token(token):
            standby, _ = await _where(B)
        return standby

    def fresh() -> Any:
        return asyncio.create_task(after_the_switch(), context=contextvars.Context())

    # Just after the write on the old cluster: the new one's writer serves
    # (the write may reach it by other means, nobody knows when)...
    assert await fresh() is False
    # ... but only for sticky_seconds: then its replicas serve again.
    served: list[bool] = []

    async def on_a_replica() -> bool:
        served.append(await fresh())
        return served[-1]

    await until(on_a_replica, seconds=5.0)
    assert served[-1] is True
