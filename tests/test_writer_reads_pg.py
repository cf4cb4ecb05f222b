"""``writer_read_weight``: the writer takes a share of replica reads, read-only."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import create_async_engine

from routing_db import (
    ConfigurationError,
    ReadOnlyViolation,
    Router,
    read_only,
    routing_sessionmaker,
    use_writer,
)
from routing_db.testing import PostgresCluster

from .conftest import where
from .models import Item

pytestmark = pytest.mark.usefixtures("clean")


@contextlib.asynccontextmanager
async def routed(cluster: PostgresCluster, **options: Any) -> AsyncIterator[Router]:
    router = Router.from_urls(cluster.writer_url, cluster.replica_urls, **options)
    try:
        yield router
    finally:
        await router.dispose()


async def test_reads_reach_the_writer_too(cluster: PostgresCluster) -> None:
    async with routed(cluster, writer_read_weight=1.0, pool_size=5) as router:
        Session = routing_sessionmaker(router)
        served = set()
        for _ in range(9):
            async with Session() as session, read_only:
                served.add(await where(session))
    assert served == {
        (cluster.primary.port, False),
        *((node.port, True) for node in cluster.replicas),
    }


async def test_writer_reads_run_in_read_only_transactions(
    cluster: PostgresCluster,
) -> None:
    # Replicas weighted 0: every read_only transaction goes to the writer. One
    # pooled connection, so the write afterwards reuses the very same one.
    async with routed(
        cluster,
        policy="weighted",
        weights=[0.0, 0.0],
        writer_read_weight=1.0,
        pool_size=1,
        max_overflow=0,
    ) as router:
        Session = routing_sessionmaker(router)
        async with Session() as session, read_only:
            assert await where(session) == (cluster.primary.port, False)
            mode = await session.scalar(text("SHOW transaction_read_only"))
            assert mode == "on"
            connection = await session.connection()
            with pytest.raises(ReadOnlyViolation):
                await connection.exec_driver_sql(
                    "INSERT INTO items (name) VALUES ('sneaky')"
                )
        # The read-only mode ended with that transaction: the next one writes.
        async with Session() as session:
            session.add(Item(name="after"))
            await session.commit()
            mode = await session.scalar(text("SHOW transaction_read_only"))
            assert mode == "off"
    names = cluster.sql(cluster.primary, "SELECT string_agg(name, ',') FROM items")
    assert names == "after"


async def test_a_write_after_writer_reads_in_one_transaction(
    cluster: PostgresCluster,
) -> None:
    async with routed(
        cluster, policy="weighted", weights=[0.0, 0.0], writer_read_weight=1.0
    ) as router:
        Session = routing_sessionmaker(router)
        async with Session() as session:
            async with read_only:
                assert await where(session) == (cluster.primary.port, False)
            async with use_writer:
                session.add(Item(name="mixed"))
                await session.flush()
                count = await session.scalar(select(func.count()).select_from(Item))
            assert count == 1
            await session.commit()
    assert cluster.sql(cluster.primary, "SELECT count(*) FROM items") == "1"


async def test_paused_replicas_never_serve_stale_reads(
    faults: PostgresCluster,
) -> None:
    cluster = faults
    async with routed(cluster, writer_read_weight=1.0) as router:
        Session = routing_sessionmaker(router, expire_on_commit=False)
        for index in range(len(cluster.replicas)):
            cluster.pause_replay(index)
        for i in range(20):
            async with Session() as session:
                session.add(Item(name=f"row{i}"))
                await session.commit()
            async with Session() as session, read_only:
                port, standby = await where(session)
                assert (port, standby) == (cluster.primary.port, False)
                count = await session.scalar(select(func.count()).select_from(Item))
                assert count == i + 1


async def test_writer_read_weight_is_checked() -> None:
    engine = create_async_engine("sqlite+aiosqlite://")
    try:
        with pytest.raises(ConfigurationError, match="PostgreSQL"):
            Router(writer=engine, writer_read_weight=1.0)
        with pytest.raises(ConfigurationError, match="writer_read_weight"):
            Router(writer=engine, writer_read_weight=-1.0)
        assert Router(writer=engine).writer_read_weight == 0.0
    finally:
        await engine.dispose()
