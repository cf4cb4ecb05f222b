"""Through a real PgBouncer in transaction pooling mode (asyncpg and psycopg).

The ``pgbouncer`` fixture fronts the primary and replica 0 with two server
connections each, so one client connection's transactions move between
server connections: a prepared statement that outlives its transaction is
then missing on the next one. Servers are identified by
``inet_server_port()``: the port PostgreSQL itself listens on, not
PgBouncer's.
"""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import create_async_engine

from routing_db import (
    ConfigurationError,
    Router,
    current_causal_token,
    read_only,
    routing_sessionmaker,
)
from routing_db._cli.main import main
from routing_db.testing import PgBouncer, PostgresCluster

from .models import Item
from .routers import RouterMaker

WHERE = text("SELECT inet_server_port(), pg_is_in_recovery(), pg_backend_pid()")


def bounced(bouncer: PgBouncer, driver: str) -> tuple[str, list[str]]:
    return bouncer.url("primary", driver), [bouncer.url("replica0", driver)]


async def test_without_the_option_prepared_statements_break(
    pgbouncer: PgBouncer,
) -> None:
    # The control (asyncpg, which prepares every statement): the failure the
    # option exists for. Client A's statement is prepared on server
    # connection 1; while B's transaction holds that one, A's next
    # transaction gets server connection 2.
    engine = create_async_engine(pgbouncer.url("primary"))
    try:
        async with engine.connect() as a, engine.connect() as b:
            await a.execute(WHERE)
            await a.commit()
            await b.execute(WHERE)  # holds server connection 1
            with pytest.raises(DBAPIError, match="prepared statement"):
                await a.execute(WHERE)
    finally:
        await engine.dispose()


@pytest.fixture
def router(
    pgbouncer: PgBouncer, cluster: PostgresCluster, make_router: RouterMaker
) -> Router:
    return make_router(*bounced(pgbouncer, cluster.driver), pgbouncer=True)


@pytest.mark.usefixtures("clean")
async def test_routing_through_pgbouncer_under_load(
    router: Router, cluster: PostgresCluster
) -> None:
    Session = routing_sessionmaker(router, expire_on_commit=False)
    primary, replica = cluster.primary.port, cluster.replicas[0].port
    seen: set[tuple[int, bool]] = set()
    backends: set[int] = set()

    async def worker(w: int) -> None:
        for n in range(10):
            async with Session() as session:
                session.add(Item(name=f"w{w}-{n}"))
                port, standby, pid = (await session.execute(WHERE)).one()
                seen.add((port, standby))
                await session.commit()
            async with Session() as session, read_only:
                # Read-your-writes, through the pooler: the floor is the
                # writer's WAL position, read after COMMIT.
                names = set(await session.scalars(select(Item.name)))
                assert f"w{w}-{n}" in names
                port, standby, pid = (await session.execute(WHERE)).one()
                seen.add((port, standby))
                backends.add(pid)

    await asyncio.gather(*(worker(w) for w in range(8)))
    assert (primary, False) in seen
    assert seen <= {(primary, False), (replica, True)}
    count = cluster.sql(cluster.primary, "SELECT count(*) FROM items")
    assert count == "80"


@pytest.mark.usefixtures("clean")
async def test_read_your_writes_through_pgbouncer_with_replay_paused(
    router: Router, faults: PostgresCluster
) -> None:
    Session = routing_sessionmaker(router, expire_on_commit=False)
    await faults.apause_replay(0)
    for n in range(10):
        async with Session() as session:
            session.add(Item(name=f"row{n}"))
            await session.commit()
        assert current_causal_token() is not None
        async with Session() as session, read_only:
            assert f"row{n}" in set(await session.scalars(select(Item.name)))
            port, standby, _ = (await session.execute(WHERE)).one()
            assert (port, standby) == (faults.primary.port, False)
    await faults.aresume_replay(0)
    await faults.await_replicated()
    async with Session() as session, read_only:
        port, standby, _ = (await session.execute(WHERE)).one()
        assert (port, standby) == (faults.replicas[0].port, True)


def test_the_option_is_for_postgresql_only() -> None:
    with pytest.raises(ConfigurationError, match="PostgreSQL"):
        Router.from_urls("sqlite+aiosqlite://", pgbouncer=True)


def test_check_warns_about_pgbouncer_without_the_option(
    pgbouncer: PgBouncer,
    cluster: PostgresCluster,
    capsys: pytest.CaptureFixture[str],
) -> None:
    writer, replicas = bounced(pgbouncer, cluster.driver)
    args = ["check", "--writer-url", writer, "--replica-url", replicas[0]]
    assert main(args) == 0  # a warning, not a failure
    err = capsys.readouterr().err
    assert err.count("warning:") == 2
    assert "PgBouncer" in err and "--pgbouncer" in err
    assert main([*args, "--pgbouncer"]) == 0
    assert "warning" not in capsys.readouterr().err
    # Straight to the servers: nothing to warn about.
    direct = ["check", "--writer-url", cluster.writer_url]
    assert main(direct) == 0
    assert "warning" not in capsys.readouterr().err
