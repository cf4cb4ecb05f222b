"""Benchmarks on the test cluster: every ratio is measured side by side in one run.

Each benchmark answers one question of benchmarks/README.md: it runs once under
pytest-benchmark and leaves its section of RESULTS.md in ``extra_info``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

import pytest
from sqlalchemy import Integer
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, configure_mappers, mapped_column

from routing_db.loadtest import prepare
from routing_db.testing import PostgresCluster

ROWS = 1000
T = TypeVar("T")


class Base(DeclarativeBase):
    pass


class BenchRow(Base):
    __tablename__ = "routing_db_bench"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    counter: Mapped[int] = mapped_column(Integer)


# Now, not at the first select: configuring replaces the entity's annotated
# table, so the engine that ran the first select would keep a cache key built
# on the old one, and every later lookup there would compare the two: small,
# but it fell on one variant only.
configure_mappers()


def measure(benchmark: Any, run: Callable[[], T]) -> T:
    """Run once under pytest-benchmark and return what ``run`` returned."""
    result: list[T] = []
    benchmark.pedantic(lambda: result.append(run()), rounds=1, iterations=1)
    return result[0]


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
