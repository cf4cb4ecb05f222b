"""A router cleans up after itself: leaving ``with router:`` / ``async with
router:`` (or ``dispose()``) stops every thread and task it started, within a
second, on both faces (issue J, section 3)."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import text

from routing_db import (
    Router,
    SyncRouter,
    read_only,
    routing_sessionmaker,
    routing_sync_sessionmaker,
)
from routing_db.testing import PostgresCluster

from .leftovers import left_over, tasks, tasks_left_over, threads

WHERE = text("SELECT inet_server_port()")


@pytest.mark.parametrize("shape", ["from_urls", "from_cluster"])
@pytest.mark.parametrize("driver", ["psycopg2", "psycopg"])
def test_a_sync_router_leaves_no_thread_behind(
    schema: PostgresCluster, driver: str, shape: str
) -> None:
    cluster = schema.with_driver(driver)
    before = threads()
    for _ in range(3):  # every `with router:` of a test suite
        router: SyncRouter = (
            SyncRouter.from_urls(cluster.writer_url, cluster.replica_urls)
            if shape == "from_urls"
            else SyncRouter.from_cluster(cluster.urls)
        )
        Session = routing_sync_sessionmaker(router)
        with router:
            with Session() as session, read_only:
                session.execute(WHERE).one()
            with Session() as session:
                session.execute(WHERE).one()
            # The monitor, and the read-timeout sweeper of the sync drivers.
            assert threads() - before
        left = left_over(before, time.monotonic() + 1.0)
        assert not left, f"threads still running after the router was left: {left}"


@pytest.mark.parametrize("shape", ["from_urls", "from_cluster"])
async def test_an_async_router_leaves_no_task_or_thread_behind(
    cluster: PostgresCluster, shape: str
) -> None:
    threads_before, tasks_before = threads(), tasks()
    for _ in range(3):
        router = (
            Router.from_urls(cluster.writer_url, cluster.replica_urls)
            if shape == "from_urls"
            else Router.from_cluster(cluster.urls)
        )
        Session = routing_sessionmaker(router)
        async with router:
            async with Session() as session:
                with read_only:
                    await session.execute(WHERE)
            assert tasks() - tasks_before  # the monitor runs
        deadline = time.monotonic() + 1.0
        left = await tasks_left_over(tasks_before, deadline)
        assert not left, f"tasks still running after the router was left: {left}"
        assert not left_over(threads_before, deadline)
