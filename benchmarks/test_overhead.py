"""1. Routing overhead on an ORM point select, against raw asyncpg, a plain
AsyncSession and advanced-alchemy's RoutingAsyncSession (the closest peer);
5. the cost of checkout checks.

One round = 200 point selects, each in a fresh session, as a request would.
Each variant is a pytest-benchmark test of its own; the ratios in RESULTS.md
come from the ``interleaved`` benchmarks, which time every variant select by
select in turn, so drift on a shared 2-core machine hits them all alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import statistics
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import pytest
import sqlalchemy
from sqlalchemy import select
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

from routing_db import Router, read_only, routing_sessionmaker
from routing_db.testing import PostgresCluster

from .conftest import ROWS, BenchRow

PER_ROUND = 200
ROUNDS = 15
# The same pool everywhere, without pre-ping: this measures routing, not the
# checkout check (measured on its own below).
POOL: dict[str, Any] = {"pool_size": 5, "max_overflow": 0, "pool_pre_ping": False}

Op = Callable[[int], Awaitable[Any]]
Variant = Callable[[PostgresCluster], contextlib.AbstractAsyncContextManager[Op]]


def orm_select(row_id: int) -> Any:
    return select(BenchRow).where(BenchRow.id == row_id)


@contextlib.asynccontextmanager
async def raw_asyncpg(cluster: PostgresCluster) -> AsyncIterator[Op]:
    dsn = cluster.writer_url.replace("postgresql+asyncpg", "postgresql")
    pool = await asyncpg.create_pool(dsn, min_size=5, max_size=5)

    async def op(row_id: int) -> Any:
        async with pool.acquire() as conn:
            return await conn.fetchrow(
                "SELECT id, counter FROM routing_db_bench WHERE id = $1", row_id
            )

    try:
        yield op
    finally:
        await pool.close()


def plain_async_session(*, replica: bool) -> Variant:
    @contextlib.asynccontextmanager
    async def variant(cluster: PostgresCluster) -> AsyncIterator[Op]:
        url = cluster.replica_urls[0] if replica else cluster.writer_url
        async with _plain(url) as op:
            yield op

    return variant


@contextlib.asynccontextmanager
async def _plain(url: str) -> AsyncIterator[Op]:
    engine = create_async_engine(url, **POOL)
    Session = async_sessionmaker(engine)  # as an application makes sessions

    async def op(row_id: int) -> Any:
        async with Session() as session:
            return (await session.execute(orm_select(row_id))).scalar_one()

    try:
        yield op
    finally:
        await engine.dispose()


def routed(scope: Any = None, *, replicas: bool = True, **options: Any) -> Variant:
    @contextlib.asynccontextmanager
    async def variant(cluster: PostgresCluster) -> AsyncIterator[Op]:
        urls = cluster.replica_urls if replicas else ()
        router = Router.from_urls(cluster.writer_url, urls, **options)
        Session = routing_sessionmaker(router)

        if scope is None:  # exactly what the plain variant does

            async def op(row_id: int) -> Any:
                async with Session() as session:
                    return (await session.execute(orm_select(row_id))).scalar_one()

        else:

            async def op(row_id: int) -> Any:
                async with Session() as session, scope:
                    return (await session.execute(orm_select(row_id))).scalar_one()

        try:
            yield op
        finally:
            await router.dispose()

    return variant


def peer(*, writer: bool) -> Variant:
    @contextlib.asynccontextmanager
    async def variant(cluster: PostgresCluster) -> AsyncIterator[Op]:
        if tuple(map(int, sqlalchemy.__version__.split(".")[:2])) >= (2, 1):
            # advanced-alchemy assigns AsyncSession.bind before __init__, which
            # SQLAlchemy 2.1 turned into a property (sqlalchemy#13563).
            pytest.skip("advanced-alchemy's RoutingAsyncSession needs SQLAlchemy 2.0")
        from advanced_alchemy.config.routing import RoutingConfig
        from advanced_alchemy.routing import RoutingAsyncSessionMaker, primary_context

        maker = RoutingAsyncSessionMaker(
            RoutingConfig(
                primary_connection_string=cluster.writer_url,
                read_replicas=list(cluster.replica_urls),
            ),
            engine_config=dict(POOL),
        )

        async def op(row_id: int) -> Any:
            # Reads go to a replica by default; primary_context forces the writer.
            with primary_context() if writer else contextlib.nullcontext():
                async with maker() as session:
                    return (await session.execute(orm_select(row_id))).scalar_one()

        try:
            yield op
        finally:
            await maker.close_all()

    return variant


OVERHEAD: dict[str, Variant] = {
    "raw_asyncpg": raw_asyncpg,
    "plain_async_session": plain_async_session(replica=False),
    "plain_async_session_replica": plain_async_session(replica=True),
    "routing_session_writer": routed(None, **POOL),
    "routing_session_read_only_replica": routed(read_only, **POOL),
    "advanced_alchemy_writer": peer(writer=True),
    "advanced_alchemy_replica": peer(writer=False),
}
_WRITER_POOL: dict[str, Any] = {"replicas": False, "pool_size": 5, "max_overflow": 0}
CHECKOUT: dict[str, Variant] = {
    "pre_ping": routed(pool_pre_ping=True, **_WRITER_POOL),
    "no_ping": routed(pool_pre_ping=False, **_WRITER_POOL),
    "idle_ping": routed(pool_pre_ping=False, ping_after_idle=1.0, **_WRITER_POOL),
}


async def one_round(op: Op, rng: random.Random) -> None:
    for _ in range(PER_ROUND):
        await op(rng.randint(1, ROWS))


def bench_one(
    benchmark: Any,
    loop: asyncio.AbstractEventLoop,
    cluster: PostgresCluster,
    variant: Variant,
) -> None:
    async def opened() -> tuple[contextlib.AsyncExitStack, Op]:
        stack = contextlib.AsyncExitStack()
        op = await stack.enter_async_context(variant(cluster))
        await one_round(op, rng)  # warm up pools and caches
        return stack, op

    rng = random.Random(7)
    stack, op = loop.run_until_complete(opened())
    benchmark.extra_info["per_round"] = PER_ROUND
    try:
        benchmark.pedantic(
            lambda: loop.run_until_complete(one_round(op, rng)),
            rounds=ROUNDS,
            warmup_rounds=1,
        )
    finally:
        loop.run_until_complete(stack.aclose())


def bench_interleaved(
    benchmark: Any,
    loop: asyncio.AbstractEventLoop,
    cluster: PostgresCluster,
    variants: dict[str, Variant],
) -> None:
    async def run_all() -> dict[str, float]:
        rng = random.Random(11)
        async with contextlib.AsyncExitStack() as stack:
            ops: dict[str, Op] = {}
            for name, variant in variants.items():
                try:
                    ops[name] = await stack.enter_async_context(variant(cluster))
                except pytest.skip.Exception:
                    continue
                await one_round(ops[name], rng)  # warm up
            # Select by select, in a fresh random order each time: drift on a
            # shared 2-core machine (other processes, CPU frequency) then hits
            # every variant alike, which whole rounds one after another do not.
            times: dict[str, list[float]] = {name: [] for name in ops}
            order = list(ops)
            for _ in range(ROUNDS * PER_ROUND):
                rng.shuffle(order)
                row_id = rng.randint(1, ROWS)
                for name in order:
                    start = time.perf_counter()
                    await ops[name](row_id)
                    times[name].append(time.perf_counter() - start)
        return {name: statistics.median(values) * 1e6 for name, values in times.items()}

    result: list[dict[str, float]] = []
    benchmark.pedantic(
        lambda: result.append(loop.run_until_complete(run_all())), rounds=1
    )
    benchmark.extra_info["median_us_per_select"] = result[0]


@pytest.mark.benchmark(group="overhead")
@pytest.mark.parametrize("variant", list(OVERHEAD))
def test_overhead(
    benchmark: Any,
    loop: asyncio.AbstractEventLoop,
    bench_cluster: PostgresCluster,
    variant: str,
) -> None:
    bench_one(benchmark, loop, bench_cluster, OVERHEAD[variant])


@pytest.mark.benchmark(group="overhead-interleaved")
def test_overhead_interleaved(
    benchmark: Any, loop: asyncio.AbstractEventLoop, bench_cluster: PostgresCluster
) -> None:
    bench_interleaved(benchmark, loop, bench_cluster, OVERHEAD)


@pytest.mark.benchmark(group="checkout")
@pytest.mark.parametrize("variant", list(CHECKOUT))
def test_checkout_cost(
    benchmark: Any,
    loop: asyncio.AbstractEventLoop,
    bench_cluster: PostgresCluster,
    variant: str,
) -> None:
    bench_one(benchmark, loop, bench_cluster, CHECKOUT[variant])


@pytest.mark.benchmark(group="checkout-interleaved")
def test_checkout_interleaved(
    benchmark: Any, loop: asyncio.AbstractEventLoop, bench_cluster: PostgresCluster
) -> None:
    bench_interleaved(benchmark, loop, bench_cluster, CHECKOUT)
