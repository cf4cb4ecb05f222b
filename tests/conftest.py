"""Fixtures for the tests that run on the real PostgreSQL cluster."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from routing_db import Router, RoutingSession, routing_sessionmaker
from routing_db._causal.floor import FLOOR
from routing_db.testing import PostgresCluster

from .models import ddl
from .routers import RouterMaker

WHERE = text("SELECT inet_server_port(), pg_is_in_recovery()")

# The fixtures that start servers. A test that uses one, itself or through
# another fixture, is marked ``servers``: ``make unit`` runs every other test.
# A test that starts servers of its own carries the mark itself.
SERVER_FIXTURES = frozenset(
    {"pg_cluster", "mariadb_cluster", "pgbouncer", "redis_server", "patroni_cluster"}
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark ``servers`` every test that needs a server fixture."""
    for item in items:
        if SERVER_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.servers)


@pytest.fixture(autouse=True)
def no_causal_floor() -> Iterator[None]:
    """Each test starts with no causal floor: sync tests share pytest's
    thread and its context, where a commit's floor would otherwise stay."""
    token = FLOOR.set(None)
    try:
        yield
    finally:
        FLOOR.reset(token)


@pytest.fixture(scope="session")
def schema(pg_cluster: PostgresCluster) -> PostgresCluster:
    """The session cluster with the test schema on it, replicated."""
    pg_cluster.sql(pg_cluster.primary, ddl())
    pg_cluster.wait_replicated()
    return pg_cluster


@pytest.fixture(params=["asyncpg", "psycopg"])
def cluster(schema: PostgresCluster, request: pytest.FixtureRequest) -> PostgresCluster:
    """The cluster, its URLs for each PostgreSQL driver in turn."""
    return schema.with_driver(request.param)


@pytest.fixture
def asyncpg_cluster(schema: PostgresCluster) -> PostgresCluster:
    """The cluster for tests of what only asyncpg has."""
    return schema


@pytest.fixture
def ports(cluster: PostgresCluster) -> dict[str, Any]:
    """The writer's port and the set of replica ports, as the servers report them."""
    return {
        "writer": int(cluster.sql(cluster.primary, "SELECT inet_server_port()")),
        "replicas": {
            int(cluster.sql(node, "SELECT inet_server_port()"))
            for node in cluster.replicas
        },
    }


@pytest.fixture
async def make_router() -> AsyncIterator[RouterMaker]:
    """Make routers in a test without disposing them by hand."""
    maker = RouterMaker()
    try:
        yield maker
    finally:
        await maker.dispose()


@pytest.fixture
def sqlite_router(tmp_path: Path, make_router: RouterMaker) -> Router:
    """A router over one SQLite file (its replica: the file opened read-only)."""
    path = tmp_path / "x.db"
    return make_router(
        f"sqlite+aiosqlite:///{path}",
        [f"sqlite+aiosqlite:///file:{path}?mode=ro&uri=true"],
    )


@pytest.fixture
def router(cluster: PostgresCluster, make_router: RouterMaker) -> Router:
    """A router over the cluster, with a small pool."""
    return make_router(
        cluster.writer_url,
        cluster.replica_urls,
        pool_size=5,
        max_overflow=5,
        pool_timeout=10,
    )


@pytest.fixture
def Session(router: Router) -> async_sessionmaker[RoutingSession]:
    return routing_sessionmaker(router, expire_on_commit=False)


@pytest.fixture
def AutoSession(router: Router) -> async_sessionmaker[RoutingSession]:
    return routing_sessionmaker(router, default_role="auto", expire_on_commit=False)


@pytest.fixture
async def clean(cluster: PostgresCluster) -> None:
    """Empty tables, replicated, before a test."""
    cluster.sql(
        cluster.primary,
        "TRUNCATE items, children, parents RESTART IDENTITY;"
        " ALTER SEQUENCE routing_seq RESTART",
    )
    await cluster.await_replicated()


class StatementLog:
    """Every statement SQLAlchemy sends, per engine (to prove nothing was sent)."""

    def __init__(self, engines: dict[str, AsyncEngine]) -> None:
        self.sent: list[tuple[str, str]] = []
        self._listeners = []
        for name, engine in engines.items():

            def listener(*args: Any, name: str = name) -> None:
                self.sent.append((name, args[2]))

            event.listen(engine.sync_engine, "before_cursor_execute", listener)
            self._listeners.append((engine.sync_engine, listener))

    def close(self) -> None:
        for target, listener in self._listeners:
            event.remove(target, "before_cursor_execute", listener)

    def clear(self) -> None:
        self.sent.clear()


@pytest.fixture
def statements(router: Router) -> Iterator[StatementLog]:
    engines = {"writer": router.writer}
    engines.update({f"replica{i}": e for i, e in enumerate(router.replicas)})
    log = StatementLog(engines)
    try:
        yield log
    finally:
        log.close()


def healed(cluster: PostgresCluster) -> Iterator[PostgresCluster]:
    """Yield ``cluster`` for faults, and heal it afterwards."""
    if not cluster.owned:
        pytest.skip("fault injection needs a cluster started by this test run")
    try:
        yield cluster
    finally:
        cluster.heal()


@pytest.fixture
def faults(cluster: PostgresCluster) -> Iterator[PostgresCluster]:
    """The cluster for a test that injects faults (per driver); healed afterwards."""
    yield from healed(cluster)


@pytest.fixture
def asyncpg_faults(asyncpg_cluster: PostgresCluster) -> Iterator[PostgresCluster]:
    """The cluster for faults that involve no driver (run once); healed."""
    yield from healed(asyncpg_cluster)


async def where(session: AsyncSession) -> tuple[int, bool]:
    """(port, in recovery) of the server that ran this statement."""
    port, standby = (await session.execute(WHERE)).one()
    return int(port), bool(standby)
