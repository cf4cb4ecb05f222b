"""Every routing rule, checked on the server that ran the statement."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from sqlalchemy import func, insert, select, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session as SyncSession

from routing_db import (
    ConfigurationError,
    NoReplicaAvailable,
    ReadOnlyViolation,
    Router,
    RoutingSession,
    read_only,
    routing_sessionmaker,
    use_writer,
)
from routing_db.testing import PostgresCluster

from .conftest import WHERE, StatementLog, where
from .models import SEQUENCE, Item, refused_write
from .routers import RouterMaker

pytestmark = pytest.mark.usefixtures("clean")

Maker = async_sessionmaker[RoutingSession]


async def count_items(cluster: PostgresCluster) -> int:
    return int(
        await asyncio.to_thread(
            cluster.sql, cluster.primary, "SELECT count(*) FROM items"
        )
    )


# -- rule 5: default role, no flag


async def test_default_role_without_flags_uses_the_writer(
    Session: Maker, ports: dict[str, Any]
) -> None:
    async with Session() as session:
        assert await where(session) == (ports["writer"], False)
        session.add(Item(name="a"))
        await session.flush()
        row = (await session.execute(select(Item, func.inet_server_port()))).one()
        assert row[1] == ports["writer"]
        await session.commit()
        assert await where(session) == (ports["writer"], False)


# -- rule 4: replica reads


async def test_read_only_text_and_orm_reads_go_to_a_replica(
    Session: Maker, cluster: PostgresCluster, ports: dict[str, Any]
) -> None:
    cluster.sql(cluster.primary, "INSERT INTO items (name) VALUES ('replicated')")
    await cluster.await_replicated()
    async with Session() as session, read_only:
        port, standby = await where(session)
        assert standby and port in ports["replicas"]
        item, served_by = (
            await session.execute(select(Item, func.inet_server_port()))
        ).one()
        assert item.name == "replicated"
        assert served_by == port  # same transaction, same replica
        assert await session.scalar(select(func.pg_is_in_recovery())) is True


async def test_decorated_async_function_reads_from_a_replica(
    Session: Maker, ports: dict[str, Any]
) -> None:
    @read_only
    async def handler() -> tuple[int, bool]:
        async with Session() as session:
            return await where(session)

    port, standby = await handler()
    assert standby and port in ports["replicas"]
    async with Session() as session:  # nothing leaked out of the decorator
        assert await where(session) == (ports["writer"], False)


async def test_decorated_sync_function_under_run_sync(
    Session: Maker, ports: dict[str, Any]
) -> None:
    @read_only
    def sync_work(session: SyncSession) -> tuple[int, bool]:
        port, standby = session.execute(WHERE).one()
        return int(port), bool(standby)

    @use_writer
    def sync_writer(session: SyncSession) -> tuple[int, bool]:
        port, standby = session.execute(WHERE).one()
        return int(port), bool(standby)

    async with Session() as session:
        port, standby = await session.run_sync(sync_work)
        assert standby and port in ports["replicas"]
    async with Session() as session, read_only:
        assert await session.run_sync(sync_writer) == (ports["writer"], False)


async def test_auto_role_reads_from_replicas(
    AutoSession: Maker, ports: dict[str, Any]
) -> None:
    async with AutoSession() as session:
        port, standby = await where(session)
        assert standby and port in ports["replicas"]


async def test_execution_option_replica_and_writer(
    Session: Maker, ports: dict[str, Any]
) -> None:
    async with Session() as session:
        port, standby = (
            await session.execute(WHERE.execution_options(routing_db_role="replica"))
        ).one()
        assert standby and port in ports["replicas"]
    async with Session() as session, read_only:
        assert (
            await session.execute(WHERE.execution_options(routing_db_role="writer"))
        ).one() == (ports["writer"], False)
    async with Session() as session:
        with pytest.raises(ConfigurationError, match="routing_db_role"):
            await session.execute(WHERE.execution_options(routing_db_role="primary"))


# -- rule 1: use_writer wins


async def test_nested_scopes(Session: Maker, ports: dict[str, Any]) -> None:
    writer = (ports["writer"], False)
    async with read_only:
        async with Session() as session:
            assert (await where(session))[1] is True
        async with use_writer:
            async with Session() as session:
                assert await where(session) == writer
                session.add(Item(name="written inside use_writer inside read_only"))
                await session.commit()
            async with read_only, Session() as session:
                # use_writer wins over an inner read_only
                assert await where(session) == writer
        async with Session() as session:
            assert (await where(session))[1] is True
    async with AutoSession_of(Session) as session, use_writer:
        assert await where(session) == writer


def AutoSession_of(maker: Maker) -> RoutingSession:
    router = maker.kw["router"]
    return routing_sessionmaker(router, default_role="auto")()


# -- rule 2: writes


async def test_for_update_goes_to_the_writer(
    AutoSession: Maker, ports: dict[str, Any]
) -> None:
    async with AutoSession() as session:
        stmt = select(Item.id, func.inet_server_port()).with_for_update()
        await session.execute(stmt)
        assert await where(session) == (ports["writer"], False)  # sticky now
    async with AutoSession() as session:
        port = await session.scalar(text("SELECT inet_server_port() FOR UPDATE"))
        assert port == ports["writer"]


async def test_textual_write_in_auto_goes_to_the_writer(
    AutoSession: Maker, cluster: PostgresCluster, ports: dict[str, Any]
) -> None:
    async with AutoSession() as session:
        await session.execute(
            text("/* SELECT */ INSERT INTO items (name) VALUES ('t')")
        )
        await session.execute(select(SEQUENCE.next_value()))
        assert await where(session) == (ports["writer"], False)
        await session.commit()
    assert await count_items(cluster) == 1


@pytest.mark.parametrize(
    "attempt",
    [
        "orm_flush",
        "orm_autoflush",
        "orm_commit",
        "core_insert",
        "text_insert",
        "text_cte_delete",
        "text_nextval",
        "orm_nextval",
        "for_update",
    ],
)
async def test_writes_inside_read_only_raise_before_anything_is_sent(
    attempt: str,
    Session: Maker,
    cluster: PostgresCluster,
    statements: StatementLog,
) -> None:
    async with Session() as session, read_only:
        if attempt.startswith("orm_") and attempt != "orm_nextval":
            session.add(Item(name="must not be written"))
        statements.clear()
        with pytest.raises(ReadOnlyViolation):
            if attempt == "orm_flush":
                await session.flush()
            elif attempt == "orm_autoflush":
                await session.execute(select(Item))
            elif attempt == "orm_commit":
                await session.commit()
            elif attempt == "core_insert":
                await session.execute(insert(Item).values(name="x"))
            elif attempt == "text_insert":
                await session.execute(text("INSERT INTO items (name) VALUES ('x')"))
            elif attempt == "text_cte_delete":
                await session.execute(
                    text("WITH d AS (DELETE FROM items RETURNING id) SELECT * FROM d")
                )
            elif attempt == "text_nextval":
                await session.execute(text("SELECT nextval('routing_seq')"))
            elif attempt == "orm_nextval":
                await session.execute(select(func.nextval("routing_seq")))
            elif attempt == "for_update":
                await session.execute(select(Item).with_for_update())
        assert statements.sent == []
    assert await count_items(cluster) == 0
    assert cluster.sql(cluster.primary, "SELECT last_value FROM routing_seq") == "1"
    assert cluster.sql(cluster.primary, "SELECT is_called FROM routing_seq") == "f"


async def test_refused_flush_keeps_the_pending_objects(
    Session: Maker, cluster: PostgresCluster
) -> None:
    async with Session() as session:
        item = Item(name="kept")
        session.add(item)
        with pytest.raises(ReadOnlyViolation):
            async with read_only:
                await session.flush()
        assert item in session.new  # nothing lost
        await session.commit()  # outside read_only it is written as usual
    assert await count_items(cluster) == 1


@pytest.mark.parametrize("form", ["function", "text", "cte"])
async def test_a_write_that_reads_like_a_select_is_refused_by_the_replica_under_auto(
    AutoSession: Maker,
    cluster: PostgresCluster,
    statements: StatementLog,
    form: str,
) -> None:
    async with AutoSession() as session:
        statements.clear()
        with pytest.raises(ReadOnlyViolation, match="use_writer") as excinfo:
            await session.scalar(refused_write(form))
        assert getattr(excinfo.value.__cause__, "sqlstate", None) == "25006"
        # Sent to a replica only: the writer never saw it.
        assert [name[:7] for name, _ in statements.sent] == ["replica"]
        await session.rollback()
        async with use_writer:  # where the application sends it
            assert isinstance(await session.scalar(refused_write(form)), int)
        await session.commit()
    assert await count_items(cluster) == 1


async def test_textual_write_that_reaches_a_replica_is_a_read_only_violation(
    Session: Maker, cluster: PostgresCluster
) -> None:
    async with Session() as session, read_only:
        # bump() inserts, but reads as a SELECT: the replica's read-only
        # transaction refuses it (SQLSTATE 25006).
        with pytest.raises(ReadOnlyViolation) as excinfo:
            await session.execute(text("SELECT bump()"))
        assert getattr(excinfo.value.__cause__, "sqlstate", None) == "25006"
        await session.rollback()
        conn = await session.connection()
        with pytest.raises(ReadOnlyViolation):
            await conn.execute(
                text("INSERT INTO items (name) VALUES ('via connection')")
            )
    assert await count_items(cluster) == 0


async def test_replica_connections_are_read_only_at_the_server(Session: Maker) -> None:
    async with Session() as session, read_only:
        assert await session.scalar(text("SHOW transaction_read_only")) == "on"
        await session.rollback()  # a rollback must not undo the setting
        assert await session.scalar(text("SHOW transaction_read_only")) == "on"
        await session.commit()
        assert await session.scalar(text("SHOW default_transaction_read_only")) == "on"
    async with Session() as session:
        assert await session.scalar(text("SHOW transaction_read_only")) == "off"


# -- rule 3: read your own writes inside a transaction


async def test_reads_after_a_flush_in_the_same_transaction_go_to_the_writer(
    AutoSession: Maker, ports: dict[str, Any]
) -> None:
    async with AutoSession() as session:
        assert (await where(session))[1] is True  # a replica first
        session.add(Item(name="mine"))
        # Autoflush, then the read: on the writer, seeing the uncommitted row.
        name, port = (
            await session.execute(select(Item.name, func.inet_server_port()))
        ).one()
        assert (name, port) == ("mine", ports["writer"])
        assert await where(session) == (ports["writer"], False)
        await session.commit()
        # A new transaction may use a replica again.
        assert (await where(session))[1] is True


async def test_reads_after_core_dml_in_the_same_transaction_go_to_the_writer(
    AutoSession: Maker, ports: dict[str, Any]
) -> None:
    async with AutoSession() as session:
        await session.execute(insert(Item).values(name="core"))
        names = (await session.execute(select(Item.name))).scalars().all()
        assert names == ["core"]
        assert await where(session) == (ports["writer"], False)
        await session.rollback()
        assert (await where(session))[1] is True


async def test_dml_on_a_raw_writer_connection_makes_the_transaction_sticky(
    AutoSession: Maker, ports: dict[str, Any]
) -> None:
    async with AutoSession() as session:
        session.get_bind()  # asking where things would go changes nothing
        assert (await where(session))[1] is True
        conn = await session.connection()  # auto: unknown work -> the writer
        await conn.execute(insert(Item).values(name="raw"))
        assert await session.scalar(select(Item.name)) == "raw"
        assert await where(session) == (ports["writer"], False)


async def test_savepoints_keep_the_transaction_sticky(
    AutoSession: Maker, ports: dict[str, Any]
) -> None:
    async with AutoSession() as session:
        async with session.begin_nested():
            session.add(Item(name="in savepoint"))
        assert await where(session) == (ports["writer"], False)
        assert await session.scalar(select(func.count()).select_from(Item)) == 1


# -- one replica per transaction


def checked_out(router: Router) -> tuple[int, int]:
    writer = router.writer.sync_engine.pool.checkedout()  # type: ignore[attr-defined]
    replicas = sum(r.sync_engine.pool.checkedout() for r in router.replicas)  # type: ignore[attr-defined]
    return writer, replicas


async def test_one_replica_per_transaction(
    Session: Maker, router: Router, ports: dict[str, Any]
) -> None:
    async with Session() as session:
        async with read_only:
            seen = {await where(session) for _ in range(20)}
            assert len(seen) == 1
            assert checked_out(router) == (0, 1)
            await session.execute(select(Item))
            assert checked_out(router) == (0, 1)
        async with use_writer:
            assert await where(session) == (ports["writer"], False)
        assert checked_out(router) == (1, 1)
        async with read_only:
            assert {await where(session)} == seen
        assert checked_out(router) == (1, 1)
        await session.commit()
        assert checked_out(router) == (0, 0)


async def test_round_robin_across_transactions(
    Session: Maker, ports: dict[str, Any]
) -> None:
    used = []
    async with Session() as session, read_only:
        for _ in range(4):
            used.append((await where(session))[0])
            await session.commit()
    assert set(used) == ports["replicas"]
    assert used[0] != used[1] and used[0] == used[2]


async def test_connection_under_read_only_is_the_replica(
    Session: Maker, ports: dict[str, Any]
) -> None:
    async with Session() as session:
        async with read_only:
            conn = await session.connection()
            port, standby = (await conn.execute(WHERE)).one()
            assert standby and port in ports["replicas"]
        conn = await session.connection()  # outside the scope: the writer
        assert (await conn.execute(WHERE)).one() == (ports["writer"], False)


async def test_get_async_bind_names_the_routed_engine(
    Session: Maker, router: Router
) -> None:
    if not hasattr(AsyncSession, "get_async_bind"):  # SQLAlchemy 2.0
        assert not hasattr(RoutingSession, "get_async_bind")  # no half-API
        return
    async with Session() as session:
        assert session.get_async_bind() is router.writer
        async with read_only:
            assert session.get_async_bind(clause=select(Item)) in router.replicas


# -- concurrency


async def test_100_concurrent_tasks_each_on_its_own_server(
    Session: Maker, ports: dict[str, Any]
) -> None:
    async def task(i: int) -> tuple[int, int, bool]:
        async def body() -> tuple[int, int, bool]:
            async with Session() as session:
                await asyncio.sleep(0.001 * (i % 7))  # interleave the tasks
                port, standby = await where(session)
                return i, port, standby

        if i % 2:
            async with read_only:
                return await body()
        return await body()

    results = await asyncio.gather(*(task(i) for i in range(100)))
    for i, port, standby in results:
        if i % 2:
            assert standby and port in ports["replicas"], i
        else:
            assert (port, standby) == (ports["writer"], False), i
    assert {port for i, port, _ in results if i % 2} == ports["replicas"]


# -- replicas and fallback


async def test_no_replicas_falls_back_to_the_writer_or_raises(
    cluster: PostgresCluster,
    ports: dict[str, Any],
    make_router: RouterMaker,
) -> None:
    fallback = make_router(cluster.writer_url)
    strict = make_router(cluster.writer_url, fallback_to_writer=False)
    async with routing_sessionmaker(fallback)() as session, read_only:
        assert await where(session) == (ports["writer"], False)
    async with routing_sessionmaker(strict)() as session, read_only:
        with pytest.raises(NoReplicaAvailable):
            await where(session)


async def test_a_replica_that_is_really_a_primary_is_refused(
    cluster: PostgresCluster,
    make_router: RouterMaker,
) -> None:
    router = make_router(cluster.writer_url, [cluster.writer_url])
    async with routing_sessionmaker(router)() as session, read_only:
        with pytest.raises(ConfigurationError, match="not a standby"):
            await where(session)
    assert router.replicas[0].sync_engine.pool.checkedout() == 0  # type: ignore[attr-defined]


async def test_primary_as_replica_when_allowed_is_still_read_only(
    cluster: PostgresCluster,
    ports: dict[str, Any],
    make_router: RouterMaker,
) -> None:
    router = make_router(
        cluster.writer_url, [cluster.writer_url], require_standby=False
    )
    async with routing_sessionmaker(router)() as session, read_only:
        assert await where(session) == (ports["writer"], False)
        with pytest.raises(ReadOnlyViolation):
            await session.execute(text("SELECT bump()"))
    assert await count_items(cluster) == 0


async def test_status_reports_pool_use(Session: Maker, router: Router) -> None:
    async with Session() as session, read_only:
        await where(session)
        status = router.status()
        assert (
            sum(e["pool"]["checked_out"] for e in status if e["role"] == "replica") == 1
        )
        assert status[0]["pool"]["checked_out"] == 0


# -- lock and session-state functions are writes (rule 2)


def _advisory_holders(cluster: PostgresCluster, node: Any, key: int) -> set[int]:
    held = cluster.sql(
        node,
        "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted"
        f" AND objid = {key}",
    )
    return {int(pid) for pid in held.split()}


@pytest.mark.parametrize("form", ["text", "core"])
async def test_an_advisory_lock_under_auto_is_held_on_the_primary(
    AutoSession: Maker, cluster: PostgresCluster, form: str
) -> None:
    key = 4242
    statement = (
        text(f"SELECT pg_advisory_lock({key})")
        if form == "text"
        else select(func.pg_advisory_lock(key))
    )
    async with AutoSession() as session:
        await session.execute(statement)
        pid = await session.scalar(text("SELECT pg_backend_pid()"))
        # Checked on the servers: the primary holds it for this session's
        # backend (the later read stayed there: the transaction "wrote"), and
        # no replica holds it for anyone.
        assert _advisory_holders(cluster, cluster.primary, key) == {pid}
        for node in cluster.replicas:
            assert _advisory_holders(cluster, node, key) == set()
        await session.execute(text(f"SELECT pg_advisory_unlock({key})"))
        await session.commit()
    assert _advisory_holders(cluster, cluster.primary, key) == set()


@pytest.mark.parametrize(
    ("statement", "name"),
    [
        (text("SELECT pg_try_advisory_xact_lock(7)"), "pg_try_advisory_xact_lock"),
        (select(func.pg_advisory_lock(7)), "pg_advisory_lock"),
        (text("SELECT set_config('search_path', 'public', false)"), "set_config"),
        (select(func.pg_notify("c", "x")), "pg_notify"),
    ],
)
async def test_a_lock_function_inside_read_only_is_refused_naming_it(
    Session: Maker, statements: StatementLog, statement: Any, name: str
) -> None:
    async with Session() as session, read_only:
        statements.clear()
        with pytest.raises(ReadOnlyViolation, match=rf"{name}\(\)"):
            await session.execute(statement)
        assert statements.sent == []
