"""Faults really injected: replicas crash or stop, the primary restarts."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest
from sqlalchemy import event, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from routing_db import (
    Router,
    RoutingSession,
    read_only,
    routing_sessionmaker,
    use_writer,
)
from routing_db.testing import PostgresCluster

from .conftest import where
from .routers import RouterMaker
from .waiting import until

pytestmark = pytest.mark.faults

Maker = async_sessionmaker[RoutingSession]


def checked_out(engines: Sequence[AsyncEngine]) -> int:
    """Connections the pools of ``engines`` have checked out now."""
    return sum(engine.sync_engine.pool.checkedout() for engine in engines)  # type: ignore[attr-defined]


def replica_index(cluster: PostgresCluster, port: int) -> int:
    return [node.port for node in cluster.replicas].index(port)


async def read_both_then_kill_the_replica(
    faults: PostgresCluster, session: RoutingSession, ports: dict[str, Any], fault: str
) -> int:
    """Read on a replica and the writer in one transaction; kill that replica
    (``terminate``: only the session's backend on it, ended by the server)."""
    async with read_only:
        port, standby = await where(session)
        pid = (await session.execute(text("SELECT pg_backend_pid()"))).scalar_one()
    assert standby
    async with use_writer:  # the same transaction also holds the writer
        assert await where(session) == (ports["writer"], False)
    index = replica_index(faults, port)
    if fault == "crash":
        await faults.acrash_replica(index)
    elif fault == "stop":
        await faults.astop_replica(index)
    else:
        ended = f"SELECT pg_terminate_backend({int(pid)}, 10000)"
        node = faults.replicas[index]
        assert await asyncio.to_thread(faults.sql, node, ended) == "t"
    return index


@pytest.mark.parametrize(
    "end",
    ["rollback", "close", "context exit", "begin() block raises", "begin().rollback()"],
)
@pytest.mark.parametrize("fault", ["crash", "stop"])
async def test_ending_a_read_whose_replica_died_raises_nothing(
    faults: PostgresCluster,
    Session: Maker,
    router: Router,
    ports: dict[str, Any],
    end: str,
    fault: str,
) -> None:
    session = Session()
    # session.begin()'s transaction rolls back through SessionTransaction, not
    # Session.rollback(): the application's own error must still come out.
    if end == "begin() block raises":
        with pytest.raises(LookupError, match="the application's error"):
            async with session.begin():
                index = await read_both_then_kill_the_replica(
                    faults, session, ports, fault
                )
                raise LookupError("the application's error")
    elif end == "begin().rollback()":
        transaction = await session.begin()
        index = await read_both_then_kill_the_replica(faults, session, ports, fault)
        await transaction.rollback()
    else:
        index = await read_both_then_kill_the_replica(faults, session, ports, fault)
        if end == "rollback":
            await session.rollback()
        elif end == "close":
            await session.close()
        else:
            async with session:
                pass
    # Nothing is left checked out, and the session is still usable.
    assert checked_out([router.writer]) == 0
    assert checked_out(router.replicas) == 0
    assert await where(session) == (ports["writer"], False)
    await session.close()
    await faults.astart_replica(index)
    # Back up, the replica serves reads again (its dead pooled connection is
    # replaced by pre-ping); round-robin reaches both replicas.
    served = set()
    for _ in range(2):
        async with Session() as s, read_only:
            served.add(await where(s))
    assert served == {(p, True) for p in ports["replicas"]}


async def test_a_failing_begin_nested_block_whose_replica_died_keeps_the_outer(
    faults: PostgresCluster, Session: Maker, router: Router, ports: dict[str, Any]
) -> None:
    async with Session() as session:
        await where(session)  # the outer transaction holds the writer
        with pytest.raises(LookupError, match="the application's error"):
            async with session.begin_nested():
                await read_both_then_kill_the_replica(faults, session, ports, "crash")
                raise LookupError("the application's error")
        # Back to the savepoint: the outer transaction goes on, the dead
        # replica's connection is gone from it.
        assert session.in_transaction()
        assert checked_out(router.replicas) == 0
        assert await where(session) == (ports["writer"], False)
        await session.commit()


async def fill_pool(maker: Maker, n: int) -> None:
    """Leave ``n`` idle connections in the writer's pool."""

    async def use() -> None:
        async with maker() as session:
            await session.execute(text("SELECT pg_sleep(0.05)"))

    await asyncio.gather(*(use() for _ in range(n)))


async def test_pooled_connections_survive_a_primary_restart(
    faults: PostgresCluster, Session: Maker, router: Router, ports: dict[str, Any]
) -> None:
    await fill_pool(Session, 3)
    assert router.writer.sync_engine.pool.checkedin() == 3  # type: ignore[attr-defined]
    await faults.arestart_primary()
    # Every pooled connection is dead now; pre-ping (on by default) swaps them.
    results = await asyncio.gather(*(_where_writer(Session) for _ in range(3)))
    assert results == [(ports["writer"], False)] * 3


async def _where_writer(maker: Maker) -> tuple[int, bool]:
    async with maker() as session:
        return await where(session)


async def test_without_pre_ping_a_restart_surfaces_as_an_error(
    faults: PostgresCluster,
    make_router: RouterMaker,
) -> None:
    # The control for the test above: it shows that test can fail.
    router = make_router(faults.writer_url, pool_pre_ping=False)
    maker = routing_sessionmaker(router)
    await fill_pool(maker, 1)
    await faults.arestart_primary()
    with pytest.raises(DBAPIError):
        await _where_writer(maker)


@pytest.mark.parametrize("routed", [False, True], ids=["AsyncSession", "routing"])
async def test_a_writer_lost_before_close_fails_close_as_for_a_plain_session(
    faults: PostgresCluster,
    Session: Maker,
    router: Router,
    ports: dict[str, Any],
    routed: bool,
) -> None:
    # Only a dead replica is dropped quietly at close: the writer's own error
    # comes out as it does from a plain AsyncSession (the control), and the
    # replica, alive, is released all the same.
    plain = async_sessionmaker(router.writer)
    session = Session() if routed else plain()
    if routed:
        async with read_only:
            assert (await where(session))[1]
    assert await where(session) == (ports["writer"], False)
    await faults.arestart_primary()
    with pytest.raises(DBAPIError):
        await session.close()
    assert checked_out(router.replicas) == 0


@pytest.mark.parametrize("ending", ["close", "begin", "commit"])
@pytest.mark.parametrize("flag", ["read_only", "none"])
async def test_a_writer_that_served_only_read_only_reads_dies_before_the_end(
    faults: PostgresCluster,
    ports: dict[str, Any],
    make_router: RouterMaker,
    flag: str,
    ending: str,
) -> None:
    """With no replica, the writer serves the read_only read; its backend is
    ended after the read returned (a failover's shutdown, say): the
    transaction only read, so close(), commit() and the end of a begin()
    block raise nothing. The control: the same read without the flag fails
    each as a plain session's would."""
    router = make_router(faults.writer_url)
    Session = routing_sessionmaker(router)
    pid = text("SELECT pg_backend_pid()")

    async def read_then_lose_the_connection(session: RoutingSession) -> None:
        assert await where(session) == (ports["writer"], False)
        backend = (await session.execute(pid)).scalar_one()
        ended = f"SELECT pg_terminate_backend({int(backend)}, 10000)"
        done = await asyncio.to_thread(faults.sql, faults.current_primary, ended)
        assert done == "t"

    async def transaction() -> None:
        if ending == "begin":
            async with Session.begin() as session:
                await read_then_lose_the_connection(session)
            return
        session = Session()
        try:
            await read_then_lose_the_connection(session)
            if ending == "commit":
                await session.commit()
        finally:
            await session.close()

    if flag == "read_only":
        async with read_only:
            await transaction()
    else:
        with pytest.raises(DBAPIError):
            await transaction()
    assert checked_out([router.writer]) == 0
    async with Session() as session:
        assert await where(session) == (ports["writer"], False)  # usable again


async def test_close_drops_a_dead_replica_whichever_connection_it_ends_first(
    faults: PostgresCluster, Session: Maker, router: Router, ports: dict[str, Any]
) -> None:
    # Session.close() ends its connections in the order of a set, which
    # changes from session to session: the dead replica may stop the close
    # before the writer's connection is released, or after. Sessions are
    # closed until both orders have been seen (each one a coin toss: 24
    # tries miss one of them about once in 8 million runs).
    roles = {router.writer.sync_engine: "writer"}
    roles.update({e.sync_engine: "replica" for e in router.replicas})
    ended: list[str] = []
    # Kept alive so that no later connection reuses an address, and so the
    # hash the set orders by.
    alive: list[Any] = []

    def on_rollback(connection: Any) -> None:
        ended.append(roles[connection.engine])
        alive.append(connection)

    for engine in roles:
        event.listen(engine, "rollback", on_rollback)
    seen: set[tuple[str, ...]] = set()
    try:
        for _ in range(24):
            session = Session()
            await read_both_then_kill_the_replica(faults, session, ports, "terminate")
            ended.clear()
            await session.close()
            seen.add(tuple(dict.fromkeys(ended)))
            assert checked_out([router.writer]) == 0
            assert checked_out(router.replicas) == 0
            if len(seen) == 2:
                break
    finally:
        for engine in roles:
            event.remove(engine, "rollback", on_rollback)
    assert seen == {("replica", "writer"), ("writer", "replica")}


@pytest.mark.parametrize("fault", ["crash", "stop"])
async def test_closing_inside_begin_nested_whose_replica_died_raises_nothing(
    faults: PostgresCluster,
    Session: Maker,
    router: Router,
    ports: dict[str, Any],
    fault: str,
) -> None:
    # Closing first releases the savepoint's transaction, then the outer one:
    # a dead replica inside the savepoint must not stop either.
    session = Session()
    await where(session)  # the outer transaction holds the writer
    await session.begin_nested()
    index = await read_both_then_kill_the_replica(faults, session, ports, fault)
    await session.close()
    assert checked_out([router.writer]) == 0
    assert checked_out(router.replicas) == 0
    assert await where(session) == (ports["writer"], False)
    await session.close()
    await faults.astart_replica(index)


async def test_a_read_only_read_on_the_writer_that_lost_its_connection_runs_again(
    faults: PostgresCluster, ports: dict[str, Any], make_router: RouterMaker
) -> None:
    """No replica serves (both paused behind a write of this context), so the
    writer serves the read_only read; its backend is ended while the first
    statement runs: nothing was written or returned, so it runs again."""
    router = make_router(faults.writer_url, faults.replica_urls)
    Session = routing_sessionmaker(router)
    for index in range(len(faults.replicas)):
        await faults.apause_replay(index)
    slow = text("SELECT pg_backend_pid(), pg_sleep(0.5), inet_server_port()")
    async with Session() as session:
        await session.execute(text("INSERT INTO items (name) VALUES ('x')"))
        await session.commit()  # the replicas have not replayed it

    running = (
        "SELECT pid FROM pg_stat_activity WHERE query LIKE "
        "'SELECT pg_backend_pid(), pg_sleep%' AND pid <> pg_backend_pid()"
    )
    ended: list[int] = []

    async def end_the_first_run() -> bool:
        found = await asyncio.to_thread(faults.sql, faults.primary, running)
        if not found:
            return False
        ended.append(int(found.splitlines()[0]))
        end = f"SELECT pg_terminate_backend({ended[0]})"
        return await asyncio.to_thread(faults.sql, faults.primary, end) == "t"

    async with Session() as session, read_only:
        ender = asyncio.create_task(until(end_the_first_run))
        pid, _, port = (await session.execute(slow)).one()
        await ender
    assert ended and pid != ended[0]  # ran again, on another backend
    assert port == ports["writer"]
