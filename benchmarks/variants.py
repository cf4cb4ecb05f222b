"""The variants the overhead and checkout benchmarks compare, in pairs, and
their timing: turn by turn, in fresh processes (benchmarks/README.md).

Each variant yields one operation: an ORM point select in a fresh session, as
a request runs it. A process: ``python -m benchmarks.variants PAIR SELECTS
SEED`` prints one JSON line.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import itertools
import json
import os
import random
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import sqlalchemy
from sqlalchemy import select
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

from routing_db import Router, read_only, routing_sessionmaker
from routing_db.testing import PostgresCluster

from .conftest import ROWS, BenchRow

__all__ = ["CHECKOUT", "OVERHEAD", "PAIRS", "in_processes", "label"]

WARM_UP = 200
# The same pool everywhere, without pre-ping: this measures routing, not the
# checkout check (the CHECKOUT pairs compare those).
POOL: dict[str, Any] = {"pool_size": 5, "max_overflow": 0, "pool_pre_ping": False}
_URLS = "ROUTING_DB_BENCH_URLS"

Op = Callable[[int], Awaitable[Any]]
Variant = Callable[[PostgresCluster], contextlib.AbstractAsyncContextManager[Op]]


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


async def point_select(Session: Callable[[], Any], row_id: int) -> Any:
    """One ORM point select in a fresh session, as a request runs it."""
    async with Session() as session:
        query = select(BenchRow).where(BenchRow.id == row_id)
        return (await session.execute(query)).scalar_one()


def plain_async_session(*, replica: bool) -> Variant:
    @contextlib.asynccontextmanager
    async def variant(cluster: PostgresCluster) -> AsyncIterator[Op]:
        # On the replicas: one engine each, taken in turn, as the routed
        # variants and the peer spread their reads.
        urls = cluster.replica_urls if replica else [cluster.writer_url]
        engines = [create_async_engine(url, **POOL) for url in urls]
        # As an application makes sessions: one sessionmaker per engine.
        turn = itertools.cycle([async_sessionmaker(e) for e in engines]).__next__

        async def op(row_id: int) -> Any:
            return await point_select(turn(), row_id)

        try:
            yield op
        finally:
            for engine in engines:
                await engine.dispose()

    return variant


def routed(scope: Any = None, *, replicas: bool = True, **options: Any) -> Variant:
    @contextlib.asynccontextmanager
    async def variant(cluster: PostgresCluster) -> AsyncIterator[Op]:
        urls = cluster.replica_urls if replicas else ()
        router = Router.from_urls(cluster.writer_url, urls, **options)
        Session = routing_sessionmaker(router)

        if scope is None:  # exactly what the plain variant does

            async def op(row_id: int) -> Any:
                return await point_select(Session, row_id)

        else:

            async def op(row_id: int) -> Any:
                async with scope:
                    return await point_select(Session, row_id)

        try:
            yield op
        finally:
            await router.dispose()

    return variant


def peer(scope: str) -> Variant:
    """advanced-alchemy's routing session inside its ``scope`` context manager."""

    @contextlib.asynccontextmanager
    async def variant(cluster: PostgresCluster) -> AsyncIterator[Op]:
        from advanced_alchemy import routing
        from advanced_alchemy.config.routing import RoutingConfig

        maker = routing.RoutingAsyncSessionMaker(
            RoutingConfig(
                primary_connection_string=cluster.writer_url,
                read_replicas=list(cluster.replica_urls),
            ),
            engine_config=dict(POOL),
        )
        enter = getattr(routing, scope)

        async def op(row_id: int) -> Any:
            with enter():
                return await point_select(maker, row_id)

        try:
            yield op
        finally:
            await maker.close_all()

    return variant


# advanced-alchemy assigns AsyncSession.bind before __init__, which SQLAlchemy
# 2.1 turned into a property (sqlalchemy#13563).
PEER_RUNS = sqlalchemy.__version__.startswith("2.0.") and bool(
    importlib.util.find_spec("advanced_alchemy")
)
UNBOUNDED: dict[str, Any] = {**POOL, "replica_read_timeout": None}
_WRITER_ONLY: dict[str, Any] = {"replicas": False, "pool_size": 5, "max_overflow": 0}
_BOUNDED = "RoutingSession, read_only, `replica_read_timeout` on (the default)"
# name -> (what it is, in RESULTS.md; how to open it)
VARIANTS: dict[str, tuple[str, Variant]] = {
    "raw_asyncpg": ("raw asyncpg (pool.acquire + fetchrow)", raw_asyncpg),
    "plain": ("plain AsyncSession", plain_async_session(replica=False)),
    "plain_replicas": (
        "plain AsyncSession, replicas in turn",
        plain_async_session(replica=True),
    ),
    "writer": ("RoutingSession, default role (writer)", routed(None, **POOL)),
    # Routing alone, like for like: the plain session and the peer bound no
    # statement either. What the bound (on by default) adds is its own pair.
    "read_only": ("RoutingSession, read_only", routed(read_only, **UNBOUNDED)),
    # For the A/A control: a router of its own, identical code.
    "read_only_again": ("a copy of itself", routed(read_only, **UNBOUNDED)),
    "read_only_bounded": (_BOUNDED, routed(read_only, **POOL)),
    "pre_ping": (
        "SQLAlchemy `pool_pre_ping`",
        routed(pool_pre_ping=True, **_WRITER_ONLY),
    ),
    "no_ping": ("no check", routed(pool_pre_ping=False, **_WRITER_ONLY)),
    "idle_ping": (
        "routing_db idle check (the default)",
        routed(pool_pre_ping=False, ping_after_idle=1.0, **_WRITER_ONLY),
    ),
    "peer_writer": ("advanced-alchemy, primary_context", peer("primary_context")),
    "peer_replica": ("advanced-alchemy, replica_context", peer("replica_context")),
}
# Pairs (a, b) timed head to head, alone in their processes: in a run of many
# variants, the library whose code runs in more of them stays warmer in the
# CPU's caches.
OVERHEAD = {
    "writer_vs_plain": ("writer", "plain"),
    "read_only_vs_plain_replicas": ("read_only", "plain_replicas"),
    "writer_vs_raw": ("writer", "raw_asyncpg"),
    "writer_vs_peer": ("writer", "peer_writer"),
    "read_only_vs_peer": ("read_only", "peer_replica"),
    "control_a_a": ("read_only", "read_only_again"),
    "read_timeout_vs_none": ("read_only_bounded", "read_only"),
}
CHECKOUT = {
    "idle_check_vs_none": ("idle_ping", "no_ping"),
    "pre_ping_vs_none": ("pre_ping", "no_ping"),
}
PAIRS = {
    name: pair
    for name, pair in {**OVERHEAD, **CHECKOUT}.items()
    if PEER_RUNS or not pair[1].startswith("peer")
}


def label(pair: tuple[str, str]) -> str:
    """What the pair compares, a / b."""
    return " / ".join(VARIANTS[name][0] for name in pair)


async def interleave(
    cluster: PostgresCluster, pair: tuple[str, str], selects: int, seed: int
) -> dict[str, float]:
    """Median µs per select of each variant of ``pair``, timed turn by turn."""
    rng = random.Random(seed)
    async with contextlib.AsyncExitStack() as stack:
        ops: dict[str, Op] = {}
        for name in pair:
            ops[name] = await stack.enter_async_context(VARIANTS[name][1](cluster))
            for _ in range(WARM_UP):  # open the pools, fill the caches
                await ops[name](rng.randint(1, ROWS))
        times: dict[str, list[float]] = {name: [] for name in ops}
        order = list(ops)
        for _ in range(selects):
            rng.shuffle(order)
            row_id = rng.randint(1, ROWS)
            for name in order:
                start = time.perf_counter()
                await ops[name](row_id)
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) * 1e6 for name, values in times.items()}


def in_processes(
    cluster: PostgresCluster, pair: str, *, processes: int, selects: int
) -> list[dict[str, float]]:
    """``interleave`` of a pair in ``processes`` fresh interpreters, seeds 1..n."""
    urls = json.dumps([cluster.writer_url, *cluster.replica_urls])
    runs = []
    for seed in range(1, processes + 1):
        env = {**os.environ, "PYTHONHASHSEED": str(seed), _URLS: urls}
        command = [sys.executable, "-m", "benchmarks.variants", pair]
        done = subprocess.run(
            [*command, str(selects), str(seed)],
            env=env,
            capture_output=True,
            text=True,
            check=False,
            timeout=1800,
        )
        if done.returncode != 0:
            raise RuntimeError(f"{pair} seed {seed}:\n{done.stderr}")
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
    return runs


def main() -> None:
    pair, selects, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    writer, *replicas = json.loads(os.environ[_URLS])
    cluster = PostgresCluster.external(writer, replicas)
    print(json.dumps(asyncio.run(interleave(cluster, PAIRS[pair], selects, seed))))


if __name__ == "__main__":
    main()
