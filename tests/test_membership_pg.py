"""Replicas added and drained while reads run: no read fails because of it."""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession

from routing_db import (
    ConfigurationError,
    Router,
    is_connection_error,
    is_transient_error,
    read_only,
    routing_sessionmaker,
)
from routing_db.testing import PostgresCluster

from .conftest import where
from .routers import RouterMaker
from .waiting import until

pytestmark = pytest.mark.slow  # a new standby is a base backup


async def test_a_replica_added_and_one_drained_under_load(
    faults: PostgresCluster, caplog: pytest.LogCaptureFixture
) -> None:
    cluster = faults
    router = Router.from_urls(
        cluster.writer_url, cluster.replica_urls[:1], monitor_interval=0.1
    )
    Session = routing_sessionmaker(router)
    new = await cluster.aadd_standby()
    served: collections.Counter[int] = collections.Counter()
    errors: list[BaseException] = []
    stop = asyncio.Event()

    async def reader() -> None:
        while not stop.is_set():
            try:
                async with Session() as session, read_only:
                    port, standby = await where(session)
                    assert standby
                    await asyncio.sleep(0.005)  # a transaction still open
                    served[port] += 1
            except Exception as exc:
                errors.append(exc)

    async with router:
        readers = [asyncio.create_task(reader()) for _ in range(10)]
        try:
            name = router.add_replica(new.url_for(cluster.driver), name="added")
            assert name == "added"
            await until(lambda: served[new.port] > 0, 5)  # within an interval

            old = router.status()[1]["name"]
            with caplog.at_level(logging.WARNING, logger="routing_db"):
                await router.remove_replica(old, drain_timeout=10)
            assert "connections in use" not in caplog.text  # all drained in time
            assert [row["name"] for row in router.status()[1:]] == ["added"]
            served.clear()
            await until(lambda: served.total() >= 50, 10)
            assert set(served) == {new.port}
        finally:
            stop.set()
            await asyncio.gather(*readers)
    assert errors == []


async def test_membership_changes_are_checked(
    cluster: PostgresCluster, make_router: RouterMaker
) -> None:
    router = make_router(cluster.writer_url, cluster.replica_urls)
    with pytest.raises(ConfigurationError, match="already has an engine named"):
        router.add_replica(cluster.replica_urls[0])
    with pytest.raises(ConfigurationError, match="no replica named"):
        await router.remove_replica("nowhere")
    with pytest.raises(ConfigurationError, match="not a valid database URL"):
        router.add_replica("not a url")


async def pinned(Session: Any, port: int) -> AsyncSession:
    """A session whose read-only transaction runs on the replica at ``port``."""
    for _ in range(20):
        session = Session()
        await session.__aenter__()
        if (await where(session))[0] == port:
            return session  # type: ignore[no-any-return]
        await session.close()
    raise AssertionError(f"no read reached port {port}")


async def test_transactions_still_open_at_drain_timeout_are_cut(
    cluster: PostgresCluster,
) -> None:
    router = Router.from_urls(cluster.writer_url, cluster.replica_urls)
    Session = routing_sessionmaker(router)
    leaving = router.status()[1]["name"]
    port = cluster.replicas[0].port
    removed = router.replicas[0].sync_engine
    with read_only:  # every statement below reads
        idle = await pinned(Session, port)  # idle in its transaction
        busy = await pinned(Session, port)
        try:
            drain = asyncio.create_task(
                router.remove_replica(leaving, drain_timeout=1.0)
            )
            await until(lambda: router.status()[1]["state"] == "draining", 5)
            started = time.monotonic()
            # A statement begun during the drain and still running at its end.
            with pytest.raises(DBAPIError) as running:
                await busy.execute(text("SELECT pg_sleep(5)"))
            assert time.monotonic() - started < 3
            await drain
            # One idle in its transaction: cut at its next statement.
            with pytest.raises(DBAPIError) as next_statement:
                await where(idle)
            for caught in (running.value, next_statement.value):
                assert is_connection_error(caught) and is_transient_error(caught)
        finally:
            await idle.close()
            await busy.close()
            # Once the cut transactions ended, the drain leaves nothing behind.
            await until(lambda: not removed.dispatch.before_cursor_execute, 5)
            await router.dispose()
    assert [row["name"] for row in router.status()[1:]] == [router.status()[1]["name"]]
