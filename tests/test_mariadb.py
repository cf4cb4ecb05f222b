"""MariaDB (aiomysql, asyncmy): routing, read_only, GTID read-your-writes, lag,
failover, error classification.

Each statement's server is checked on the server (``@@server_id``: 1 is the
primary); replicas are stopped from applying with ``STOP SLAVE SQL_THREAD``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.dialects import mysql
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.schema import CreateTable
from tenacity import wait_none

from routing_db import (
    ConfigurationError,
    ReadOnlyViolation,
    ReplicaReadTimeout,
    RetryPolicy,
    Router,
    RoutingSession,
    causal_token,
    current_causal_token,
    is_connection_error,
    is_transient_error,
    read_only,
    routing_sessionmaker,
)
from routing_db.testing import Balancer, MariaDBCluster

from .blackhole import Blackhole
from .bounds import stopped_on_the_server
from .errors import capture, deadlock
from .models import Item
from .read_back import read_back
from .routers import RouterMaker
from .waiting import until, until_sync

pytestmark = pytest.mark.mariadb

WHERE = text("SELECT @@server_id, @@global.read_only, @@session.tx_read_only")
PRIMARY = 1
FAST = RetryPolicy(attempts=3, wait=wait_none())
Maker = async_sessionmaker[RoutingSession]


def items_ddl() -> str:
    dialect = mysql.dialect()
    dialect.is_mariadb = True
    # IF NOT EXISTS: either MariaDB test module may run first.
    table = CreateTable(Item.__table__, if_not_exists=True)  # type: ignore[arg-type]
    return str(table.compile(dialect=dialect))


@pytest.fixture(scope="module")
def maria(mariadb_cluster: MariaDBCluster) -> MariaDBCluster:
    mariadb_cluster.sql(mariadb_cluster.primary, f"USE app; {items_ddl()}")
    # A write that reads like a SELECT to routing_db. (DETERMINISTIC: with
    # binary logging on, MariaDB creates no function without such a flag.)
    mariadb_cluster.sql(
        mariadb_cluster.primary,
        "DELIMITER //\n"
        "CREATE FUNCTION IF NOT EXISTS app.bump() RETURNS INT DETERMINISTIC "
        "MODIFIES SQL DATA "
        "BEGIN INSERT INTO app.items (name) VALUES ('bumped'); "
        "RETURN LAST_INSERT_ID(); END //\nDELIMITER ;\n"
        "GRANT EXECUTE ON FUNCTION app.bump TO 'app'@'127.0.0.1';",
    )
    mariadb_cluster.wait_replicated()
    return mariadb_cluster


@pytest.fixture
def db(maria: MariaDBCluster) -> Iterator[MariaDBCluster]:
    """The cluster with an empty table, healed after the test."""
    maria.sql(maria.primary, "TRUNCATE app.items")
    maria.wait_replicated()
    try:
        yield maria
    finally:
        maria.heal()


@pytest.fixture(params=["aiomysql", "asyncmy"])
def urls(db: MariaDBCluster, request: pytest.FixtureRequest) -> tuple[str, list[str]]:
    """The writer's and the replicas' URLs for each MySQL driver in turn."""
    driver = request.param
    return db.primary.url_for(driver), [n.url_for(driver) for n in db.replicas]


@pytest.fixture
def router(urls: tuple[str, list[str]], make_router: RouterMaker) -> Router:
    # No time window: only GTID positions stand between a read and stale data.
    return make_router(
        *urls,
        pool_size=5,
        retry=FAST,
        monitor_interval=0.1,
        sticky_seconds=0,
    )


@pytest.fixture
def Session(router: Router) -> Maker:
    return routing_sessionmaker(router, expire_on_commit=False)


async def where(session: AsyncSession) -> tuple[int, bool, bool]:
    """(server_id, server read_only, this transaction read-only) where it ran."""
    server, global_ro, session_ro = (await session.execute(WHERE)).one()
    return int(server), bool(global_ro), bool(session_ro)


CONNECTION_ID = text("SELECT CONNECTION_ID()")


def end_connection(db: MariaDBCluster, connection_id: int) -> None:
    """KILL a connection on the primary; return once the server has ended it."""
    db.sql(db.primary, f"KILL {int(connection_id)}")
    left = (
        "SELECT COUNT(*) FROM information_schema.PROCESSLIST "
        f"WHERE ID = {int(connection_id)}"
    )
    until_sync(lambda: db.sql(db.primary, left) == "0")


def replica_ids(db: MariaDBCluster) -> set[int]:
    return {node.server_id for node in db.replicas}


async def test_writes_go_to_the_primary_and_reads_to_read_only_replicas(
    db: MariaDBCluster, Session: Maker
) -> None:
    async with Session() as session:
        assert await where(session) == (PRIMARY, False, False)
        session.add(Item(name="w"))
        await session.commit()
    db.wait_replicated()
    served = set()
    for _ in range(4):
        async with Session() as session, read_only:
            served.add(await where(session))
            assert (await session.scalar(select(func.count()).select_from(Item))) == 1
    # Round robin reaches both replicas; each is read_only=1 at the server and
    # the transaction is read-only too.
    assert served == {(server, True, True) for server in replica_ids(db)}
    assert db.sql(db.primary, "SELECT count(*) FROM app.items") == "1"


async def test_a_write_under_read_only_is_refused_and_nothing_is_written(
    db: MariaDBCluster, Session: Maker
) -> None:
    async with Session() as session, read_only:
        session.add(Item(name="no"))
        with pytest.raises(ReadOnlyViolation):
            await session.flush()
        await session.rollback()
    async with Session() as session, read_only:
        # Past the classifier (on the transaction's replica connection
        # itself): the server refuses it.
        connection = await session.connection()
        with pytest.raises(ReadOnlyViolation) as caught:
            await connection.exec_driver_sql("INSERT INTO items (name) VALUES ('raw')")
        # Chained to the server's own refusal: 1290 (--read-only) or 1792
        # (read-only transaction), whichever the server checks first.
        cause = caught.value.__cause__
        assert cause is not None and cause.args[0] in (1290, 1792)
    for node in (db.primary, *db.replicas):
        assert db.sql(node, "SELECT count(*) FROM app.items") == "0"


async def test_under_auto_a_write_that_reads_like_a_select_is_refused(
    db: MariaDBCluster, router: Router
) -> None:
    AutoSession = routing_sessionmaker(router, default_role="auto")
    async with AutoSession() as session:
        assert (await where(session))[0] in replica_ids(db)
        with pytest.raises(ReadOnlyViolation) as caught:
            await session.scalar(text("SELECT bump()"))
        cause = caught.value.__cause__
        assert cause is not None and cause.args[0] in (1290, 1792)
    for node in (db.primary, *db.replicas):
        assert db.sql(node, "SELECT count(*) FROM app.items") == "0"


async def test_read_your_writes_by_gtid_while_replicas_apply_nothing(
    db: MariaDBCluster, Session: Maker
) -> None:
    for index in range(len(db.replicas)):
        db.stop_applying(index)
    for n in range(30):
        async with Session() as session:
            session.add(Item(name=f"row{n}"))
            await session.commit()
        token = current_causal_token()
        assert token is not None and token.startswith("gtid:0-1-")
        # The token is the commit's own GTID, as the primary numbers it (and
        # its cluster, the replication domain, and when it was made).
        gtid = db.sql(db.primary, "SELECT @@global.gtid_binlog_pos")
        assert token.startswith(f"gtid:{gtid}~d0~")
        async with Session() as session, read_only:
            names = set(await session.scalars(select(Item.name)))
            assert f"row{n}" in names  # never a stale read
            assert (await where(session))[0] == PRIMARY  # nobody else has it


async def test_a_write_in_autocommit_gives_read_your_writes_without_commit(
    db: MariaDBCluster, Session: Maker
) -> None:
    # Each statement commits on its own (its GTID is @@last_gtid): no commit().
    for index in range(len(db.replicas)):
        db.stop_applying(index)
    async with Session() as session:
        await session.connection(execution_options={"isolation_level": "AUTOCOMMIT"})
        session.add(Item(name="autocommit"))
        await session.flush()
    token = current_causal_token()
    assert token is not None and token.startswith("gtid:0-1-")
    async with Session() as session, read_only:
        assert set(await session.scalars(select(Item.name))) == {"autocommit"}
        assert (await where(session))[0] == PRIMARY  # nobody else has it


async def test_read_your_writes_through_a_reader_endpoint(
    db: MariaDBCluster, urls: tuple[str, list[str]]
) -> None:
    """One replica URL in front of both replicas (each new connection reaches
    the next one), replica 0 applying nothing: each read is judged by the
    server its own connection reached, never stale, never failed."""
    db.stop_applying(0)
    writer_url, replica_urls = urls
    with Balancer([node.port for node in db.replicas]) as balancer:
        # No lag limits: replica 0's stopped SQL thread has no measured lag,
        # which counts as over any limit, and the monitor's check judges the
        # endpoint by whichever server it reached (a known gap). Each read is
        # still judged by its own connection's server, which is under test.
        router = Router.from_urls(
            writer_url, [balancer.url(replica_urls[0])], pool_size=4, retry=FAST,
            sticky_seconds=0, max_lag_bytes=None, max_lag_seconds=None,
        )  # fmt: skip
        Session = routing_sessionmaker(router, expire_on_commit=False)

        async def server_id(session: AsyncSession) -> int:
            return (await where(session))[0]

        async with router:
            seen = await read_back(Session, server_id, users=4, writes=8)
        assert balancer.connections >= 2  # both replicas were reached
    assert not seen.errors, seen.errors[:3]
    assert not seen.stale, seen.stale[:5]
    assert len(seen.served) == 32
    assert db.replicas[0].server_id not in seen.served
    assert db.replicas[1].server_id in seen.served  # the one that applies served


async def test_the_token_string_carries_read_your_writes_to_another_context(
    db: MariaDBCluster, Session: Maker
) -> None:
    db.stop_applying(0)

    async def write() -> str:
        async with Session() as session:
            session.add(Item(name="carried"))
            await session.commit()
        token = current_causal_token()
        assert token is not None
        return token

    token = await asyncio.create_task(write())  # its own context

    async def read(token: str | None) -> tuple[set[str], int]:
        with causal_token(token):
            async with Session() as session, read_only:
                names = set(await session.scalars(select(Item.name)))
                return names, (await where(session))[0]

    # Replica 1 applies, replica 0 does not: with the token, reads never get
    # replica 0 (each replica is judged by its own position).
    db.wait_replicated_on(1)
    for _ in range(6):
        names, server = await asyncio.create_task(read(token))
        assert "carried" in names
        assert server != db.replicas[0].server_id
    # The control: without the token, replica 0 serves its stale copy.
    stale = [await asyncio.create_task(read(None)) for _ in range(4)]
    assert any(
        server == db.replicas[0].server_id and "carried" not in names
        for names, server in stale
    )


async def test_lag_from_show_slave_status_takes_a_replica_out(
    db: MariaDBCluster,
    urls: tuple[str, list[str]],
    make_router: RouterMaker,
) -> None:
    router = make_router(*urls, max_lag_seconds=1, monitor_interval=0.1)
    Session = routing_sessionmaker(router)
    db.delay_applying(0, seconds=60)
    try:
        async with router:
            db.sql(db.primary, "INSERT INTO app.items (name) VALUES ('late')")
            deadline = time.monotonic() + 20
            while not router.status()[1]["lagging"]:
                assert time.monotonic() < deadline, router.status()
                await asyncio.sleep(0.05)
            assert router.status()[1]["lag_seconds"] > 1
            for _ in range(6):
                async with Session() as session, read_only:
                    assert (await where(session))[0] == db.replicas[1].server_id
    finally:
        db.delay_applying(0, seconds=0)


async def test_a_crashed_replica_fails_no_read_and_comes_back(
    db: MariaDBCluster, router: Router, Session: Maker
) -> None:
    async with router:
        db.crash_replica(0)
        served = []
        for _ in range(20):
            async with Session() as session, read_only:
                served.append((await where(session))[0])
        assert set(served) == {db.replicas[1].server_id}
        assert router.status()[1]["ejected"] is True
        db.start_replica(0)
        deadline = time.monotonic() + 10
        while router.status()[1]["ejected"]:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        served_after = set()
        for _ in range(4):
            async with Session() as session, read_only:
                served_after.add((await where(session))[0])
        assert served_after == replica_ids(db)


async def test_a_write_on_a_pooled_connection_the_server_ended_is_not_lost(
    db: MariaDBCluster,
    urls: tuple[str, list[str]],
    make_router: RouterMaker,
) -> None:
    """aiomysql and asyncmy find out a pooled connection is dead only when a
    statement sent on it fails, and a write that may have been sent is never
    rerun: the checkout check must find the server's goodbye first."""
    router = make_router(
        *urls, pool_size=1, max_overflow=0, ping_after_idle=60, retry=FAST
    )
    Session = routing_sessionmaker(router)
    async with Session() as session:
        session.add(Item(name="before"))
        await session.flush()
        first = await session.scalar(CONNECTION_ID)
        await session.commit()
    await asyncio.to_thread(end_connection, db, first)
    async with Session() as session:
        session.add(Item(name="after"))
        await session.flush()
        assert await session.scalar(CONNECTION_ID) != first
        await session.commit()
    names = db.sql(db.primary, "SELECT name FROM app.items ORDER BY id")
    assert names.split() == ["before", "after"]


async def test_classification_of_real_mariadb_errors(
    db: MariaDBCluster, router: Router
) -> None:
    writer = router.writer
    db.crash_replica(0)
    refused = await capture(router.replicas[0].connect().__aenter__())
    async with writer.connect() as conn:
        connection_id = await conn.scalar(text("SELECT CONNECTION_ID()"))
        db.sql(db.primary, f"KILL {connection_id}")
        killed = await capture(conn.execute(text("SELECT 1")))
    db.sql(db.primary, "INSERT INTO app.items (id, name) VALUES (1, 'a'), (2, 'b')")
    lost = await deadlock(writer, 1, 2)
    assert "Deadlock" in str(lost)
    async with writer.connect() as conn:
        duplicate = await capture(
            conn.execute(text("INSERT INTO items (id, name) VALUES (1, 'dup')"))
        )
        syntax = await capture(conn.execute(text("SELEC 1")))

    for error in (refused, killed):
        assert is_connection_error(error) and is_transient_error(error), error
    assert not is_connection_error(lost) and is_transient_error(lost)
    for error in (duplicate, syntax):
        assert not is_connection_error(error) and not is_transient_error(error)


async def test_a_replica_that_is_really_a_primary_is_refused(
    urls: tuple[str, list[str]],
    make_router: RouterMaker,
) -> None:
    router = make_router(urls[0], [urls[0]])
    with pytest.raises(ConfigurationError, match="not a standby"):
        async with routing_sessionmaker(router)() as session, read_only:
            await where(session)


async def test_a_replica_whose_replication_stopped_stops_serving(
    db: MariaDBCluster, urls: tuple[str, list[str]]
) -> None:
    router = Router.from_urls(*urls, monitor_interval=0.1, retry=FAST)
    Session = routing_sessionmaker(router)
    stalled = router.status()[1]["name"]
    async with router:
        db.sql(db.replicas[0], "STOP SLAVE IO_THREAD")
        await until(lambda: router.status()[1]["state"] == "not_streaming", 5)
        # Nothing written since: it is not behind, and keeps serving.
        assert router.status()[1]["eligible"], router.status()
        async with Session() as session:
            session.add(Item(name="unseen there"))
            await session.commit()
        # Behind now, with no measure of how far (no Seconds_Behind_Master
        # without the IO thread): past the lag limits, on by default.
        await until(lambda: not router.status()[1]["eligible"], 5)
        for _ in range(6):
            async with Session() as session, read_only:
                assert (await where(session))[0] == db.replicas[1].server_id
        db.sql(db.replicas[0], "START SLAVE IO_THREAD")
        await until(lambda: router.status()[1]["state"] == "serving", 10)
        await until(lambda: router.status()[1]["eligible"], 10)
    assert stalled == router.status()[1]["name"]


@pytest.mark.parametrize("kind", ["silent", "unaccepted"])
async def test_a_blackholed_replica_costs_one_bounded_connect(
    db: MariaDBCluster,
    urls: tuple[str, list[str]],
    kind: str,
    make_router: RouterMaker,
) -> None:
    writer, replicas = urls
    with Blackhole(kind) as hole:
        router = make_router(
            writer,
            [make_url(replicas[0]).set(port=hole.port), replicas[1]],
            connect_timeout=1.0,
            retry=FAST,
        )
        Session = routing_sessionmaker(router)
        for _ in range(4):
            started = time.monotonic()
            async with Session() as session, read_only:
                assert (await where(session))[0] == db.replicas[1].server_id
            # At most one connect bound (the first read), with room for
            # a loaded machine.
            assert time.monotonic() - started < 2.5
        assert router.status()[1]["ejected"]


async def test_reads_on_a_hung_replica_are_bounded_and_served_elsewhere(
    db: MariaDBCluster, urls: tuple[str, list[str]]
) -> None:
    hung = db.replicas[0].server_id
    router = Router.from_urls(
        *urls, replica_read_timeout=1.0, connect_timeout=1.0, monitor_interval=0.1
    )
    Session = routing_sessionmaker(router)
    took: dict[str, list[tuple[float, int]]] = {"hung": [], "after": []}
    errors: list[BaseException] = []
    phase: list[str | None] = ["before"]

    async def read() -> None:
        while (started_in := phase[0]) is not None:
            started = time.monotonic()
            try:
                async with Session() as session, read_only:
                    server = (await where(session))[0]
            except Exception as exc:  # counted: the test wants none
                errors.append(exc)
                continue
            took.setdefault(started_in, []).append((time.monotonic() - started, server))

    async with router:
        readers = [asyncio.create_task(read()) for _ in range(10)]
        try:
            await until(lambda: len(took.get("before", [])) >= 50, 10)
            phase[0] = "hung"
            await db.ahang_replica(0)
            await asyncio.sleep(4.0)  # the hang's length, not a wait for state
            phase[0] = "after"
            await db.aresume_replica(0)
            # The monitor's probe re-admits it: a read is served there again.
            await until(lambda: hung in {s for _, s in took["after"]}, 5.0)
        finally:
            phase[0] = None
            await db.aresume_replica(0)
            await asyncio.gather(*readers)
    assert errors == []
    # None waited out the hang: the read bound (1 s) or the connect bound
    # (1 s), then elsewhere, with room for a loaded machine.
    assert max(t for phase_took in took.values() for t, _ in phase_took) < 2.5
    assert {s for _, s in took["hung"]} & replica_ids(db)


async def test_a_later_statement_on_a_hung_replica_raises_a_typed_error(
    db: MariaDBCluster,
    urls: tuple[str, list[str]],
    make_router: RouterMaker,
) -> None:
    writer, replicas = urls
    router = make_router(writer, replicas[:1], replica_read_timeout=1.0)
    Session = routing_sessionmaker(router)
    try:
        async with Session() as session, read_only:
            await where(session)
            await db.ahang_replica(0)
            started = time.monotonic()
            with pytest.raises(ReplicaReadTimeout) as caught:
                await where(session)
            assert time.monotonic() - started < 2.0
            assert caught.value.connection_invalidated
            assert is_transient_error(caught.value)  # unit_of_work reruns it
        assert router.status()[1]["ejected"]
    finally:
        await db.aresume_replica(0)


async def test_the_checkout_ping_on_a_hung_replica_is_bounded(
    db: MariaDBCluster,
    urls: tuple[str, list[str]],
    make_router: RouterMaker,
) -> None:
    """The idle check's COM_PING at checkout is bounded like a statement."""
    writer, replicas = urls
    router = make_router(
        writer, replicas[:1], replica_read_timeout=1.0, ping_after_idle=0.1
    )
    Session = routing_sessionmaker(router)
    try:
        async with Session() as session, read_only:
            assert (await where(session))[0] != PRIMARY  # a pooled replica one
        await asyncio.sleep(0.3)  # idle past ping_after_idle: pinged next
        await db.ahang_replica(0)
        started = time.monotonic()
        async with asyncio.timeout(10), Session() as session, read_only:
            served = (await where(session))[0]  # unbounded: waits out the hang
        assert served == PRIMARY  # the only replica was ejected by the ping
        assert time.monotonic() - started < 2.5
    finally:
        await db.aresume_replica(0)


async def test_a_statement_past_the_bound_is_stopped_on_the_server(
    db: MariaDBCluster, urls: tuple[str, list[str]], make_router: RouterMaker
) -> None:
    writer, replicas = urls
    router = make_router(writer, replicas[:1], replica_read_timeout=1.0)
    Session = routing_sessionmaker(router)

    def sleeping() -> int:
        return int(
            db.sql(
                db.replicas[0],
                "SELECT count(*) FROM information_schema.processlist"
                " WHERE info LIKE 'SELECT SLEEP(30)%'",
            )
        )

    slow = text("SELECT SLEEP(30)")
    await stopped_on_the_server(Session, pin=where, slow=slow, running=sleeping)
