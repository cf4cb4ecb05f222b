"""1. Routing overhead on an ORM point select, against raw asyncpg, a plain
AsyncSession and advanced-alchemy's RoutingAsyncSession (the closest peer).

One round = 200 point selects, each in a fresh session, as a request would.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import asyncpg
import pytest
import sqlalchemy
from advanced_alchemy.config.routing import RoutingConfig
from advanced_alchemy.routing import RoutingAsyncSessionMaker, primary_context
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

from routing_db import Router, read_only, routing_sessionmaker
from routing_db.testing import PostgresCluster

from .conftest import ROWS, BenchRow

PER_ROUND = 200
# The same pool everywhere, without pre-ping: this measures routing, not the
# checkout ping (benchmark 5 measures that).
POOL: dict[str, Any] = {"pool_size": 5, "max_overflow": 0, "pool_pre_ping": False}
rng = random.Random(7)


def ids() -> Iterator[int]:
    while True:
        yield rng.randint(1, ROWS)


def run(
    benchmark: Any, loop: asyncio.AbstractEventLoop, op: Callable[[int], Awaitable[Any]]
) -> None:
    async def one_round() -> None:
        source = ids()
        for _ in range(PER_ROUND):
            await op(next(source))

    loop.run_until_complete(one_round())  # warm up pools and caches
    benchmark.extra_info["per_round"] = PER_ROUND
    benchmark.pedantic(
        lambda: loop.run_until_complete(one_round()), rounds=15, warmup_rounds=1
    )


def orm_select(row_id: int) -> Any:
    return select(BenchRow).where(BenchRow.id == row_id)


@pytest.mark.benchmark(group="overhead")
def test_raw_asyncpg(
    benchmark: Any, loop: asyncio.AbstractEventLoop, bench_cluster: PostgresCluster
) -> None:
    dsn = bench_cluster.writer_url.replace("postgresql+asyncpg", "postgresql")

    async def create() -> Any:
        return await asyncpg.create_pool(dsn, min_size=5, max_size=5)

    pool = loop.run_until_complete(create())

    async def op(row_id: int) -> Any:
        async with pool.acquire() as conn:
            return await conn.fetchrow(
                "SELECT id, counter FROM routing_db_bench WHERE id = $1", row_id
            )

    try:
        run(benchmark, loop, op)
    finally:
        loop.run_until_complete(pool.close())


@pytest.mark.benchmark(group="overhead")
def test_plain_async_session(
    benchmark: Any, loop: asyncio.AbstractEventLoop, bench_cluster: PostgresCluster
) -> None:
    engine = create_async_engine(bench_cluster.writer_url, **POOL)

    async def op(row_id: int) -> Any:
        async with AsyncSession(engine) as session:
            return (await session.execute(orm_select(row_id))).scalar_one()

    try:
        run(benchmark, loop, op)
    finally:
        loop.run_until_complete(engine.dispose())


def _router(cluster: PostgresCluster) -> Router:
    return Router.from_urls(cluster.writer_url, cluster.replica_urls, **POOL)


@pytest.mark.benchmark(group="overhead")
def test_routing_session_writer(
    benchmark: Any, loop: asyncio.AbstractEventLoop, bench_cluster: PostgresCluster
) -> None:
    router = _router(bench_cluster)
    Session = routing_sessionmaker(router)

    async def op(row_id: int) -> Any:
        async with Session() as session:
            return (await session.execute(orm_select(row_id))).scalar_one()

    try:
        run(benchmark, loop, op)
    finally:
        loop.run_until_complete(router.dispose())


@pytest.mark.benchmark(group="overhead")
def test_routing_session_read_only_replica(
    benchmark: Any, loop: asyncio.AbstractEventLoop, bench_cluster: PostgresCluster
) -> None:
    router = _router(bench_cluster)
    Session = routing_sessionmaker(router)

    async def op(row_id: int) -> Any:
        async with Session() as session, read_only:
            return (await session.execute(orm_select(row_id))).scalar_one()

    try:
        run(benchmark, loop, op)
    finally:
        loop.run_until_complete(router.dispose())


def _peer(cluster: PostgresCluster) -> RoutingAsyncSessionMaker:
    if tuple(map(int, sqlalchemy.__version__.split(".")[:2])) >= (2, 1):
        # advanced-alchemy assigns AsyncSession.bind before AsyncSession.__init__,
        # which SQLAlchemy 2.1 turned into a property (sqlalchemy#13563).
        pytest.skip("advanced-alchemy's RoutingAsyncSession needs SQLAlchemy 2.0")
    return RoutingAsyncSessionMaker(
        RoutingConfig(
            primary_connection_string=cluster.writer_url,
            read_replicas=list(cluster.replica_urls),
        ),
        engine_config=dict(POOL),
    )


@pytest.mark.benchmark(group="overhead")
def test_advanced_alchemy_replica(
    benchmark: Any, loop: asyncio.AbstractEventLoop, bench_cluster: PostgresCluster
) -> None:
    maker = _peer(bench_cluster)

    async def op(row_id: int) -> Any:
        async with maker() as session:  # reads go to a replica by default
            return (await session.execute(orm_select(row_id))).scalar_one()

    try:
        run(benchmark, loop, op)
    finally:
        loop.run_until_complete(maker.close_all())


@pytest.mark.benchmark(group="overhead")
def test_advanced_alchemy_writer(
    benchmark: Any, loop: asyncio.AbstractEventLoop, bench_cluster: PostgresCluster
) -> None:
    maker = _peer(bench_cluster)

    async def op(row_id: int) -> Any:
        with primary_context():
            async with maker() as session:
                return (await session.execute(orm_select(row_id))).scalar_one()

    try:
        run(benchmark, loop, op)
    finally:
        loop.run_until_complete(maker.close_all())


@pytest.mark.benchmark(group="checkout")
@pytest.mark.parametrize(
    "ping",
    ["pre_ping", "no_ping", "idle_ping"],
)
def test_checkout_cost(
    benchmark: Any,
    loop: asyncio.AbstractEventLoop,
    bench_cluster: PostgresCluster,
    ping: str,
) -> None:
    """5. pool_pre_ping on vs off vs a ping only after 1 s idle (or a closed socket)."""
    choices: dict[str, dict[str, Any]] = {
        "pre_ping": {"pool_pre_ping": True},
        "no_ping": {"pool_pre_ping": False},
        "idle_ping": {"pool_pre_ping": False, "ping_after_idle": 1.0},
    }
    options = choices[ping]
    router = Router.from_urls(
        bench_cluster.writer_url, pool_size=5, max_overflow=0, **options
    )
    Session = routing_sessionmaker(router)

    async def op(row_id: int) -> Any:
        async with Session() as session:
            return (await session.execute(orm_select(row_id))).scalar_one()

    try:
        run(benchmark, loop, op)
    finally:
        loop.run_until_complete(router.dispose())
