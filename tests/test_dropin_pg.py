"""Drop-in promise: with no flag, a RoutingSession is a plain AsyncSession."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import delete, event, func, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session as SyncSession
from sqlalchemy.orm import selectinload

from routing_db import Router, RoutingSession, routing_sessionmaker
from routing_db.testing import PostgresCluster

from .models import Child, Item, Parent
from .routers import RouterMaker

Factory = Callable[[], AsyncSession]


async def scenario(make: Factory, expire_on_commit: bool) -> list[Any]:
    """Ordinary session patterns; returns what a caller would observe."""
    seen: list[Any] = []
    # begin() as a context manager: commit on success
    async with make() as session, session.begin():
        session.add_all(
            [
                Parent(id=1, name="p1", children=[Child(id=1, name="c1")]),
                Parent(id=2, name="p2"),
                Item(name="i1"),
            ]
        )
    async with make() as session:
        parent = await session.get(Parent, 1)
        assert parent is not None
        seen.append(parent.name)
        # lazy load through awaitable_attrs
        seen.append([c.name for c in await parent.awaitable_attrs.children])
        # selectin load
        parents = (
            await session.scalars(
                select(Parent)
                .options(selectinload(Parent.children))
                .order_by(Parent.id)
            )
        ).all()
        seen.append([(p.name, [c.name for c in p.children]) for p in parents])
        # savepoint rolled back, outer transaction kept
        nested = await session.begin_nested()
        session.add(Item(name="rolled back"))
        await nested.rollback()
        seen.append(await session.scalar(select(func.count()).select_from(Item)))
        # merge, refresh, Core update, run_sync, stream
        merged = await session.merge(Parent(id=2, name="p2 merged"))
        await session.flush()
        await session.execute(
            update(Parent).where(Parent.id == 2).values(name="p2 core")
        )
        await session.refresh(merged)
        seen.append(merged.name)

        def count_sync(sync_session: SyncSession) -> int:
            return int(
                sync_session.scalar(select(func.count()).select_from(Parent)) or 0
            )

        seen.append(await session.run_sync(count_sync))
        result = await session.stream(select(Item.name).order_by(Item.id))
        seen.append([name async for name in result.scalars()])
        seen.append((await session.execute(text("SELECT 40 + 2"))).scalar_one())
        await session.commit()
        # expire_on_commit: attributes reload (or not) after commit
        if expire_on_commit:
            seen.append(await merged.awaitable_attrs.name)
        else:
            seen.append(merged.name)
        seen.append(session.in_transaction())
    # an error rolls back
    async with make() as session:
        session.add(Item(name="doomed"))
        await session.flush()
        with pytest.raises(Exception, match="division by zero"):
            await session.execute(text("SELECT 1/0"))
        await session.rollback()
        seen.append(await session.scalar(select(func.count()).select_from(Item)))
        await session.execute(delete(Child))
        await session.commit()
    return seen


def reset(cluster: PostgresCluster) -> None:
    cluster.sql(
        cluster.primary,
        "TRUNCATE items, children, parents RESTART IDENTITY; "
        "ALTER SEQUENCE routing_seq RESTART",
    )


@pytest.mark.parametrize("expire_on_commit", [True, False])
async def test_same_results_and_same_sql_as_a_plain_async_session(
    router: Router, cluster: PostgresCluster, expire_on_commit: bool
) -> None:
    sent: list[str] = []

    def log(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        sent.append(statement)

    event.listen(router.writer.sync_engine, "before_cursor_execute", log)
    factories: dict[str, Factory] = {
        "AsyncSession": async_sessionmaker(
            router.writer, expire_on_commit=expire_on_commit
        ),
        "routing_sessionmaker": routing_sessionmaker(
            router, expire_on_commit=expire_on_commit
        ),
        "RoutingSession without router": async_sessionmaker(
            router.writer, class_=RoutingSession, expire_on_commit=expire_on_commit
        ),
    }
    runs: dict[str, tuple[list[Any], list[str]]] = {}
    try:
        for name, make in factories.items():
            reset(cluster)
            sent.clear()
            runs[name] = (await scenario(make, expire_on_commit), list(sent))
    finally:
        event.remove(router.writer.sync_engine, "before_cursor_execute", log)
    baseline_seen, baseline_sql = runs["AsyncSession"]
    assert baseline_seen[0] == "p1" and baseline_seen[-1] == 1
    for name, (seen, sql) in runs.items():
        assert seen == baseline_seen, name
        assert sql == baseline_sql, name
    replica_pools = [r.sync_engine.pool.checkedin() for r in router.replicas]  # type: ignore[attr-defined]
    assert replica_pools == [0, 0]  # no replica was ever connected to


async def test_constructed_like_an_async_session(
    router: Router, cluster: PostgresCluster, make_router: RouterMaker
) -> None:
    other = make_router(cluster.writer_url)
    # bind=, binds= and an explicit bind argument resolve as in AsyncSession
    session = RoutingSession(bind=router.writer)
    assert isinstance(session, AsyncSession)
    assert session.bind is router.writer
    assert session.get_bind() is router.writer.sync_engine
    await session.close()
    session = RoutingSession(binds={Item: other.writer, Parent: router.writer})
    assert session.get_bind(Item) is other.writer.sync_engine
    assert session.get_bind(Parent) is router.writer.sync_engine
    await session.close()
    session = routing_sessionmaker(router)()
    assert session.bind is router.writer
    assert session.get_bind(bind=other.writer.sync_engine) is other.writer.sync_engine
    await session.close()
    # a custom sync_session_class still works without a router
    session = RoutingSession(bind=router.writer, sync_session_class=SyncSession)
    assert type(session.sync_session) is SyncSession
    assert await session.scalar(text("SELECT 1")) == 1
    await session.close()


async def test_binds_for_another_database_are_not_routed(
    router: Router, cluster: PostgresCluster, make_router: RouterMaker
) -> None:
    from routing_db import read_only

    other = make_router(cluster.writer_url)
    maker = routing_sessionmaker(router, binds={Item: other.writer})
    async with maker() as session, read_only:
        assert session.get_bind(Item) is other.writer.sync_engine
        # Parent is not in binds: it falls back to the router's writer and
        # is routed to a replica.
        assert session.get_bind(Parent, clause=select(Parent)) in [
            r.sync_engine for r in router.replicas
        ]
