"""Pooled connections the server has already ended, used before the client knows.

The server's FATAL reaches the client but the end of the stream is held back
(``HoldCloseProxy``): asyncpg then refuses every statement ("cannot switch to
state ...") while ``is_closed()`` is still false. Nothing was sent, so a
first statement runs again on a new connection, and a replay-position check
counts the replica as failed: the application sees neither.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import insert, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncSession
from tenacity import wait_none

from routing_db import RetryPolicy, Router, read_only, routing_sessionmaker
from routing_db.testing import PostgresCluster

from .conftest import where
from .models import Item
from .proxy import HoldCloseProxy, unread_bytes
from .waiting import until

pytestmark = [pytest.mark.faults, pytest.mark.usefixtures("clean")]


@pytest.fixture
async def proxy(cluster: PostgresCluster) -> AsyncIterator[HoldCloseProxy]:
    proxy = await HoldCloseProxy(cluster.replicas[0].port).start()
    try:
        yield proxy
    finally:
        await proxy.stop()


def via(url: str, proxy: HoldCloseProxy) -> str:
    return make_url(url).set(port=proxy.port).render_as_string(hide_password=False)


def make_router(writer: str, replicas: list[str]) -> Router:
    return Router.from_urls(
        writer,
        replicas,
        pool_size=1,
        max_overflow=0,
        # The idle ping would find the dead connection first: this is about
        # the connection that passes the checkout check.
        ping_after_idle=60,
        retry=RetryPolicy(wait=wait_none()),
    )


async def server_ends(
    cluster: PostgresCluster,
    proxy: HoldCloseProxy,
    session: AsyncSession,
    node: Any,
) -> None:
    """End ``session``'s backend on ``node``; return once its FATAL was read."""
    connection = await session.connection()
    raw = await connection.get_raw_connection()
    driver = raw.driver_connection
    pid = await session.scalar(text("SELECT pg_backend_pid()"))
    await session.commit()
    proxy.hold_close = True
    ended = f"SELECT pg_terminate_backend({int(pid)})"
    assert await asyncio.to_thread(cluster.sql, node, ended) == "t"
    await until(lambda: proxy.closes_held == 1)
    transport = getattr(driver, "_transport", None)
    if transport is not None:  # asyncpg: wait until its event loop read it
        sock = transport.get_extra_info("socket")
        await until(lambda: unread_bytes(sock) == 0)


@pytest.mark.parametrize("kind", ["write", "read"])
async def test_a_first_statement_on_a_connection_told_to_go_runs_again(
    cluster: PostgresCluster, kind: str
) -> None:
    proxy = await HoldCloseProxy(cluster.primary.port).start()
    router = make_router(via(cluster.writer_url, proxy), cluster.replica_urls)
    Session = routing_sessionmaker(router)
    try:
        async with Session() as session:
            await session.execute(insert(Item).values(name="before"))
            await server_ends(cluster, proxy, session, cluster.primary)
        async with Session() as session:
            # Its BEGIN is refused before anything is sent: run again.
            if kind == "read":
                assert await session.scalar(select(Item.name)) == "before"
            await session.execute(insert(Item).values(name="after"))
            await session.commit()
    finally:
        proxy.release()
        await router.dispose()
        await proxy.stop()
    names = cluster.sql(cluster.primary, "SELECT name FROM items ORDER BY id")
    assert names.split() == ["before", "after"]


async def test_a_replay_check_on_a_connection_told_to_go_serves_elsewhere(
    cluster: PostgresCluster, proxy: HoldCloseProxy, ports: dict[str, Any]
) -> None:
    router = make_router(cluster.writer_url, [via(cluster.replica_urls[0], proxy)])
    Session = routing_sessionmaker(router)
    try:
        async with Session() as session, read_only:
            assert (await where(session))[1] is True
            await server_ends(cluster, proxy, session, cluster.replicas[0])
        async with Session() as session:
            await session.execute(insert(Item).values(name="mine"))
            await session.commit()  # this context now has a position to see
        async with Session() as session, read_only:
            served = await where(session)
            assert await session.scalar(select(Item.name)) == "mine"
        if cluster.driver == "asyncpg":
            # Its replay position cannot be read: not caught up, not an error.
            assert served == (ports["writer"], False)
            assert router.status()[1]["ejected"] is True
        else:
            # psycopg's idle check finds the FATAL unread in the socket and
            # the pool replaces the connection: the replica, caught up, serves.
            assert served == (cluster.replicas[0].port, True)
    finally:
        proxy.release()
        await router.dispose()


async def test_a_replica_read_on_a_connection_told_to_go_runs_on_another(
    cluster: PostgresCluster, proxy: HoldCloseProxy
) -> None:
    other = cluster.replicas[1].port
    router = make_router(
        cluster.writer_url,
        [via(cluster.replica_urls[0], proxy), cluster.replica_urls[1]],
    )
    Session = routing_sessionmaker(router)
    try:
        async with Session() as session, read_only:
            while (await where(session))[0] == other:  # the proxied one's turn
                await session.commit()
            await server_ends(cluster, proxy, session, cluster.replicas[0])
        served = set()
        for _ in range(2):  # round robin: one of them is the proxied replica's
            async with Session() as session, read_only:
                served.add(await where(session))
        if cluster.driver == "asyncpg":  # its BEGIN refused: run on the other
            assert served == {(other, True)}
        else:  # the idle check replaced psycopg's connection: both serve
            assert served == {(other, True), (cluster.replicas[0].port, True)}
    finally:
        proxy.release()
        await router.dispose()
