"""Benchmarks on the test cluster: every ratio is measured side by side in one run.

Each benchmark builds its own event loop and engines (pytest-benchmark times
plain callables); absolute times depend on the machine, only ratios matter.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from sqlalchemy import Integer
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, configure_mappers, mapped_column

from routing_db.loadtest import prepare
from routing_db.testing import PostgresCluster

ROWS = 1000


class Base(DeclarativeBase):
    pass


class BenchRow(Base):
    __tablename__ = "routing_db_bench"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    counter: Mapped[int] = mapped_column(Integer)


# Now, not at the first select: configuring replaces the entity's annotated
# table, so the engine that ran the first select would keep a cache key built
# on the old one, and every later lookup there would compare the two (about
# 0.2 µs a select, measured): small, but it fell on one variant only.
configure_mappers()


@pytest.fixture(scope="session")
def bench_cluster(pg_cluster: PostgresCluster) -> PostgresCluster:
    """The cluster with the benchmark table, replicated."""

    async def setup() -> None:
        engine = create_async_engine(pg_cluster.writer_url)
        try:
            await prepare(engine, rows=ROWS)
        finally:
            await engine.dispose()

    asyncio.run(setup())
    pg_cluster.wait_replicated()
    return pg_cluster


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    try:
        yield loop
    finally:
        loop.close()
