"""Retries: classification of real errors; reruns that are safe, none that are not."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import event, func, select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from tenacity import wait_none

from routing_db import (
    CommitOutcomeUnknown,
    NoReplicaAvailable,
    RetryPolicy,
    Router,
    is_connection_error,
    is_recovery_conflict,
    is_transient_error,
    read_only,
    routing_sessionmaker,
    run_unit_of_work,
    unit_of_work,
)
from routing_db.testing import PostgresCluster

from .conftest import StatementLog, where
from .errors import capture, deadlock
from .models import Item
from .routers import RouterMaker
from .waiting import until

FAST = RetryPolicy(attempts=3, wait=wait_none())
SLOW_WHERE = text("SELECT inet_server_port() FROM pg_sleep(0.005)")


def terminate(
    cluster: PostgresCluster, node: Any, pids: list[int] | None = None
) -> None:
    """Terminate client backends on ``node`` (all but psql's own, or ``pids``)."""
    which = (
        f"pid IN ({','.join(map(str, pids))})"
        if pids
        else "backend_type = 'client backend' AND pid <> pg_backend_pid()"
    )
    cluster.sql(
        node, f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE {which}"
    )
    # pg_terminate_backend only signals: wait until they are really gone.
    deadline = time.monotonic() + 10
    while int(
        cluster.sql(node, f"SELECT count(*) FROM pg_stat_activity WHERE {which}")
    ):
        assert time.monotonic() < deadline
        time.sleep(0.01)


@pytest.mark.usefixtures("clean")
async def test_classification_of_real_errors(
    router: Router, faults: PostgresCluster
) -> None:
    writer = router.writer
    # Refused: the server is not there.
    faults.stop_replica(0)
    refused = await capture(router.replicas[0].connect().__aenter__())
    # Terminated by the server (57P01) while the connection was pooled.
    async with writer.connect() as conn:
        pid = await conn.scalar(text("SELECT pg_backend_pid()"))
        terminate(faults, faults.primary, [pid])
        terminated = await capture(conn.execute(text("SELECT 1")))
    # Serialization failure (40001) and deadlock (40P01) between two transactions.
    async with writer.connect() as a, writer.connect() as b:
        await a.execute(text("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE"))
        await b.execute(text("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE"))
        await a.execute(text("SELECT count(*) FROM items"))
        await b.execute(text("SELECT count(*) FROM items"))
        await a.execute(text("INSERT INTO items (name) VALUES ('a')"))
        await b.execute(text("INSERT INTO items (name) VALUES ('b')"))
        await a.commit()
        serialization = await capture(b.commit())
    async with writer.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO items (id, name) OVERRIDING SYSTEM VALUE"
                " VALUES (-1, 'x'), (-2, 'y')"
            )
        )
    deadlocked = await deadlock(writer, -1, -2)
    assert "deadlock" in str(deadlocked)
    async with writer.connect() as conn:
        duplicate = await capture(
            conn.execute(
                text(
                    "INSERT INTO items (id, name) OVERRIDING SYSTEM VALUE"
                    " VALUES (-1, 'dup')"
                )
            )
        )
        await conn.rollback()
        syntax = await capture(conn.execute(text("SELEC 1")))

    assert is_connection_error(refused) and is_transient_error(refused)
    assert is_connection_error(terminated) and is_transient_error(terminated)
    for error in (serialization, deadlocked):
        assert not is_connection_error(error)
        assert is_transient_error(error)
        assert not is_recovery_conflict(error)
    for error in (duplicate, syntax, NoReplicaAvailable("none")):
        assert not is_connection_error(error)
        assert not is_transient_error(error)


@pytest.fixture
async def small_router(cluster: PostgresCluster) -> AsyncIterator[Router]:
    router = Router.from_urls(
        cluster.writer_url,
        cluster.replica_urls,
        pool_size=5,
        max_overflow=0,
        pool_timeout=5,
        retry=FAST,
        monitor_interval=0.1,
    )
    async with router:
        yield router


async def test_killing_a_replica_under_read_load_fails_no_read(
    small_router: Router, faults: PostgresCluster
) -> None:
    Session = routing_sessionmaker(small_router)
    failures: list[BaseException] = []
    slowest = 0.0
    crashed = asyncio.Event()
    served_before: set[int] = set()

    served_after: set[int] = set()

    async def worker() -> None:
        nonlocal slowest
        for _ in range(15):
            start = time.monotonic()
            try:
                async with Session() as session, read_only:
                    # IO-bound (5 ms on the server): reads are in flight when
                    # the replica dies, not only idle pooled connections.
                    port = await session.scalar(SLOW_WHERE)
                    if not crashed.is_set():
                        served_before.add(port)
                    else:
                        served_after.add(port)
            except Exception as exc:
                failures.append(exc)
            slowest = max(slowest, time.monotonic() - start)
            await asyncio.sleep(0)

    async def crash() -> None:
        everyone = {n.port for n in faults.replicas}
        await until(lambda: served_before == everyone)  # the load runs on both
        await faults.acrash_replica(0)
        crashed.set()

    await asyncio.gather(crash(), *(worker() for _ in range(200)))
    assert crashed.is_set()
    # The load ran on both replicas before the crash and went on after it.
    assert served_before == {n.port for n in faults.replicas}
    assert served_after == {faults.replicas[1].port}
    assert failures == []
    assert slowest < 5  # nobody waited out pool_timeout
    assert small_router.status()[1]["ejected"] is True


async def test_a_lost_first_read_is_rerun_on_another_node(
    cluster: PostgresCluster, faults: PostgresCluster, make_router: RouterMaker
) -> None:
    router = make_router(
        cluster.writer_url, cluster.replica_urls, pool_pre_ping=False, retry=FAST
    )
    Session = routing_sessionmaker(router)
    # One pooled connection on each replica, then the servers drop them.
    for _ in range(2):
        async with Session() as session, read_only:
            await where(session)
    terminate(faults, faults.replicas[0])
    log = StatementLog({"r0": router.replicas[0], "r1": router.replicas[1]})
    served = set()
    for _ in range(2):  # round robin: one of them meets the dead connection
        async with Session() as session, read_only:
            served.add(await where(session))
    log.close()
    assert all(standby for _, standby in served)
    # Three sends for two reads: one on the dead connection, then again.
    assert len(log.sent) == 3
    assert router.status()[1]["ejected"] is True


async def test_a_lost_later_read_is_raised_and_the_session_recovers(
    cluster: PostgresCluster, faults: PostgresCluster, make_router: RouterMaker
) -> None:
    router = make_router(cluster.writer_url, cluster.replica_urls, retry=FAST)
    Session = routing_sessionmaker(router)
    async with Session() as session, read_only:
        port, _ = await where(session)
        node = next(n for n in faults.replicas if n.port == port)
        terminate(faults, node)
        with pytest.raises(DBAPIError):
            await where(session)
        await session.rollback()
        assert (await where(session))[1] is True


async def _wrote_then_lost_the_writer(
    session: AsyncSession, faults: PostgresCluster, name: str
) -> None:
    """Flush a write, then have the server end this session's writer backend."""
    session.add(Item(name=name))
    await session.flush()
    pid = (await session.execute(text("SELECT pg_backend_pid()"))).scalar_one()
    terminate(faults, faults.primary, [pid])


@pytest.mark.usefixtures("clean")
async def test_a_statement_after_a_write_is_never_resent(
    router: Router, faults: PostgresCluster, statements: StatementLog
) -> None:
    Session = routing_sessionmaker(router)
    async with Session() as session:
        await _wrote_then_lost_the_writer(session, faults, "once")
        statements.clear()
        with pytest.raises(DBAPIError):
            await session.execute(select(func.count()).select_from(Item))
        assert len(statements.sent) == 1
        await session.rollback()
    assert faults.sql(faults.primary, "SELECT count(*) FROM items") == "0"


async def _commit_through(path: str, Session: Any, write: Any) -> None:
    """Commit ``write``'s work the way ``path`` names."""
    if path == "unit_of_work":  # a begin() block, rerun on transient errors
        await run_unit_of_work(Session, write)
    elif path == "commit":
        async with Session() as session:
            await write(session)
            await session.commit()
    else:  # the begin() block's transaction, committed explicitly
        async with Session() as session:
            transaction = await session.begin()
            await write(session)
            await transaction.commit()


@pytest.mark.usefixtures("clean")
@pytest.mark.parametrize("path", ["unit_of_work", "commit", "transaction_commit"])
async def test_a_lost_commit_is_outcome_unknown_and_not_rerun(
    router: Router, faults: PostgresCluster, path: str
) -> None:
    Session = routing_sessionmaker(router, expire_on_commit=False)
    calls = 0
    pids: list[int] = []

    def kill_before_commit(conn: Any) -> None:
        terminate(faults, faults.primary, pids)

    async def write(session: AsyncSession) -> None:
        nonlocal calls
        calls += 1
        session.add(Item(name="maybe"))
        await session.flush()
        pids.append(
            (await session.execute(text("SELECT pg_backend_pid()"))).scalar_one()
        )

    event.listen(router.writer.sync_engine, "commit", kill_before_commit)
    try:
        with pytest.raises(CommitOutcomeUnknown) as caught:
            await _commit_through(path, Session, write)
    finally:
        event.remove(router.writer.sync_engine, "commit", kill_before_commit)
    assert calls == 1
    assert isinstance(caught.value, DBAPIError)
    assert "may or may not" in str(caught.value)
    # Killed before COMMIT reached it: nothing was committed this time.
    assert faults.sql(faults.primary, "SELECT count(*) FROM items") == "0"


@pytest.mark.usefixtures("clean")
async def test_a_connection_lost_outside_commit_is_not_outcome_unknown(
    router: Router, faults: PostgresCluster
) -> None:
    Session = routing_sessionmaker(router)
    async with Session() as session:
        await _wrote_then_lost_the_writer(session, faults, "never")
        # The rollback finds the connection gone: nothing was committed, and
        # nothing says it might have been.
        try:
            await session.rollback()
        except DBAPIError as exc:
            assert not isinstance(exc, CommitOutcomeUnknown)
    async with Session() as session:
        session.add(Item(name="next"))
        await session.commit()
    assert faults.sql(faults.primary, "SELECT count(*) FROM items") == "1"


@pytest.mark.usefixtures("clean")
async def test_serialization_failures_are_rerun_by_the_unit_of_work(
    cluster: PostgresCluster,
    make_router: RouterMaker,
) -> None:
    router = make_router(
        cluster.writer_url,
        cluster.replica_urls,
        isolation_level="SERIALIZABLE",
        retry=RetryPolicy(attempts=100, wait=wait_none()),
    )
    Session = routing_sessionmaker(router)
    attempts = 0

    @unit_of_work(Session)
    async def next_number(session: AsyncSession) -> None:
        nonlocal attempts
        attempts += 1
        n = await session.scalar(select(func.count()).select_from(Item))
        session.add(Item(name=f"n{n}"))

    await asyncio.gather(*(next_number() for _ in range(30)))
    names = cluster.sql(cluster.primary, "SELECT string_agg(name, ',') FROM items")
    assert sorted(names.split(","), key=lambda s: int(s[1:])) == [
        f"n{i}" for i in range(30)
    ]
    assert attempts > 30  # some did fail with 40001 and ran again


@pytest.mark.usefixtures("clean")
async def test_primary_restart_under_write_load(
    cluster: PostgresCluster,
    faults: PostgresCluster,
    make_router: RouterMaker,
) -> None:
    router = make_router(
        cluster.writer_url, cluster.replica_urls, pool_size=5, retry=FAST
    )
    Session = routing_sessionmaker(router)
    acknowledged: set[str] = set()
    raised: dict[str, BaseException] = {}
    successes: list[float] = []
    restarted_at: list[float] = []
    stop = asyncio.Event()

    async def insert(session: AsyncSession, key: str) -> None:
        session.add(Item(name=key))

    async def writer(w: int) -> None:
        i = 0
        while not stop.is_set():
            key = f"w{w}-{i}"
            i += 1
            try:
                await run_unit_of_work(Session, insert, key)
            except Exception as exc:
                raised[key] = exc
            else:
                acknowledged.add(key)
                successes.append(time.monotonic())
            await asyncio.sleep(0.005)

    async def restart() -> None:
        await until(lambda: len(successes) > 0)  # writes are flowing
        await faults.arestart_primary()
        restarted_at.append(time.monotonic())
        await asyncio.sleep(2)
        stop.set()

    await asyncio.gather(restart(), *(writer(w) for w in range(10)))
    rows = cluster.sql(
        cluster.primary, "SELECT name || ':' || count(*) FROM items GROUP BY name"
    ).split()
    counts = dict(row.split(":") for row in rows)
    assert all(c == "1" for c in counts.values()), "a write was applied twice"
    assert acknowledged <= counts.keys(), "an acknowledged write is missing"
    # Every write not acknowledged was raised to its caller.
    assert counts.keys() - acknowledged <= raised.keys()
    assert any(t > restarted_at[0] for t in successes)
    assert min(t for t in successes if t > restarted_at[0]) - restarted_at[0] < 10


async def test_writer_connect_is_retried(
    cluster: PostgresCluster, make_router: RouterMaker
) -> None:
    # A writer URL whose first connects are refused: a port nobody listens on
    # is swapped for the real one after two failures, via the engine's
    # do_connect event (the real server then serves the retried connect).
    engine = create_async_engine(cluster.writer_url, pool_size=1)
    tries = 0

    @event.listens_for(engine.sync_engine, "do_connect")
    def refuse_twice(dialect: Any, rec: Any, cargs: Any, cparams: Any) -> None:
        nonlocal tries
        tries += 1
        if tries <= 2:
            cparams["port"] = 1  # nothing listens there: connection refused

    router = make_router.keep(Router(writer=engine, retry=FAST))
    async with routing_sessionmaker(router)() as session:
        assert (await where(session))[1] is False
    assert tries == 3


@pytest.mark.usefixtures("clean")
async def test_a_recovery_conflict_on_a_first_read_is_rerun(
    cluster: PostgresCluster,
    faults: PostgresCluster,
    make_router: RouterMaker,
) -> None:
    # Replica 0 cancels queries that conflict with replay at once.
    conflicted = faults.replicas[0]
    faults.sql(conflicted, "ALTER SYSTEM SET max_standby_streaming_delay = 0")
    faults.sql(conflicted, "SELECT pg_reload_conf()")
    router = make_router(
        cluster.writer_url,
        cluster.replica_urls,
        policy="weighted",
        weights=[1, 0],  # the first attempt goes to replica 0
        retry=FAST,
    )
    long_read = text("SELECT inet_server_port() FROM pg_sleep(1.5)")

    async def the_long_read_runs() -> bool:
        running = await asyncio.to_thread(
            faults.sql,
            conflicted,
            "SELECT count(*) FROM pg_stat_activity WHERE state = 'active'"
            " AND query LIKE '%pg_sleep(1.5)%' AND pid <> pg_backend_pid()",
        )
        return int(running) > 0

    async def clean_up_rows_on_the_primary() -> None:
        await until(the_long_read_runs)
        for sql in ("INSERT INTO items (name) VALUES ('dead')", "DELETE FROM items"):
            await asyncio.to_thread(faults.sql, faults.primary, sql)
        # Removes rows the running read's snapshot may still see: a conflict.
        await asyncio.to_thread(faults.sql, faults.primary, "VACUUM items")

    try:
        # What the standby raises, captured on a plain connection.
        async with router.replicas[0].connect() as conn:
            plain, _ = await asyncio.gather(
                capture(conn.execute(long_read)), clean_up_rows_on_the_primary()
            )
        assert is_recovery_conflict(plain)
        assert is_transient_error(plain)
        assert not is_connection_error(plain)

        Session = routing_sessionmaker(router)

        async def routed() -> Any:
            async with Session() as session, read_only:
                return await session.scalar(long_read)

        port, _ = await asyncio.gather(routed(), clean_up_rows_on_the_primary())
        assert port == faults.replicas[1].port
        # A conflict is not a failure of the replica: it stays in service.
        assert router.status()[1]["ejected"] is False
    finally:
        faults.sql(conflicted, "ALTER SYSTEM RESET max_standby_streaming_delay")
        faults.sql(conflicted, "SELECT pg_reload_conf()")
