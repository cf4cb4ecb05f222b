"""The variants the overhead and checkout benchmarks compare, and the pairs.

Each variant opens what it needs on a cluster and yields one operation: an ORM
point select in a fresh session, as a request would run it.
"""

from __future__ import annotations

import contextlib
import importlib.util
import itertools
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import sqlalchemy
from sqlalchemy import select
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

from routing_db import Router, read_only, routing_sessionmaker
from routing_db.testing import PostgresCluster

from .conftest import ROWS, BenchRow

__all__ = ["PAIRS", "VARIANTS", "Op", "Variant", "warm_up"]

WARM_UP = 200
# The same pool everywhere, without pre-ping: this measures routing, not the
# checkout check (the *_ping variants compare those).
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


async def point_select(Session: Callable[[], Any], row_id: int) -> Any:
    """One ORM point select in a fresh session, as a request runs it."""
    async with Session() as session:
        return (await session.execute(orm_select(row_id))).scalar_one()


def plain_async_session(*, replica: bool) -> Variant:
    @contextlib.asynccontextmanager
    async def variant(cluster: PostgresCluster) -> AsyncIterator[Op]:
        # On the replicas: one engine each, taken in turn, as the routed
        # variants and the peer spread their reads.
        urls = cluster.replica_urls if replica else [cluster.writer_url]
        engines = [create_async_engine(url, **POOL) for url in urls]
        # As an application makes sessions: one sessionmaker per engine.
        makers = [async_sessionmaker(engine) for engine in engines]
        turn = itertools.cycle(makers).__next__

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


def _peer_runs() -> bool:
    # advanced-alchemy assigns AsyncSession.bind before __init__, which
    # SQLAlchemy 2.1 turned into a property (sqlalchemy#13563).
    version = tuple(map(int, sqlalchemy.__version__.split(".")[:2]))
    return version < (2, 1) and importlib.util.find_spec("advanced_alchemy") is not None


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


UNBOUNDED: dict[str, Any] = {**POOL, "replica_read_timeout": None}
_WRITER_ONLY: dict[str, Any] = {"replicas": False, "pool_size": 5, "max_overflow": 0}
VARIANTS: dict[str, Variant] = {
    "raw_asyncpg": raw_asyncpg,
    "plain_async_session": plain_async_session(replica=False),
    "plain_async_session_replica": plain_async_session(replica=True),
    "routing_session_writer": routed(None, **POOL),
    # Routing alone, like for like: the plain session and the peer bound no
    # statement either. What the bound (on by default) adds is its own pair.
    "routing_session_read_only_replica": routed(read_only, **UNBOUNDED),
    # A copy for the A/A control: a router of its own, identical code.
    "routing_session_read_only_replica_again": routed(read_only, **UNBOUNDED),
    "routing_session_read_only_bounded": routed(read_only, **POOL),
    "pre_ping": routed(pool_pre_ping=True, **_WRITER_ONLY),
    "no_ping": routed(pool_pre_ping=False, **_WRITER_ONLY),
    "idle_ping": routed(pool_pre_ping=False, ping_after_idle=1.0, **_WRITER_ONLY),
}
# Every comparison runs head to head, the two variants alone in their
# processes: in a run of many variants, the library whose code runs in more of
# them stays warmer in the CPU's caches (benchmarks/README.md).
PAIRS: dict[str, tuple[str, str]] = {
    "writer_vs_plain": ("routing_session_writer", "plain_async_session"),
    "read_only_vs_plain_replicas": (
        "routing_session_read_only_replica",
        "plain_async_session_replica",
    ),
    "writer_vs_raw": ("routing_session_writer", "raw_asyncpg"),
    "plain_vs_raw": ("plain_async_session", "raw_asyncpg"),
    # What identical code measures apart: the method's resolution.
    "control_a_a": (
        "routing_session_read_only_replica",
        "routing_session_read_only_replica_again",
    ),
    "read_timeout_vs_none": (
        "routing_session_read_only_bounded",
        "routing_session_read_only_replica",
    ),
    "idle_check_vs_none": ("idle_ping", "no_ping"),
    "pre_ping_vs_none": ("pre_ping", "no_ping"),
}
if _peer_runs():
    VARIANTS["advanced_alchemy_writer"] = peer("primary_context")
    VARIANTS["advanced_alchemy_replica"] = peer("replica_context")
    PAIRS["writer_vs_peer"] = ("routing_session_writer", "advanced_alchemy_writer")
    PAIRS["read_only_vs_peer"] = (
        "routing_session_read_only_replica",
        "advanced_alchemy_replica",
    )


async def warm_up(op: Op, rng: random.Random) -> None:
    """Open the variant's pools and fill its caches."""
    for _ in range(WARM_UP):
        await op(rng.randint(1, ROWS))
