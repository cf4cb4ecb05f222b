"""A router with the Patroni source cleans up after itself: leaving it stops
every thread (the REST API's askers of the sync face) and task it started
within a second (issue J, section 3)."""

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
from routing_db.testing import PatroniCluster

from ..leftovers import left_over, tasks, tasks_left_over, threads

WHERE = text("SELECT inet_server_port()")
# libpq counts connect_timeout in whole seconds, at least 2.
CONNECT_TIMEOUT = 2


@pytest.mark.parametrize("driver", ["psycopg2", "psycopg"])
def test_a_sync_patroni_router_leaves_no_thread_behind(
    patroni_cluster: PatroniCluster, driver: str
) -> None:
    cluster = patroni_cluster.with_driver(driver)
    before = threads()
    for _ in range(3):
        router = SyncRouter.from_cluster(
            cluster.urls, patroni=cluster.rest_urls, monitor_interval=0.1
        )
        Session = routing_sync_sessionmaker(router)
        with router:
            router.poll()  # Patroni is asked from the role-check threads
            with Session() as session, read_only:
                session.execute(WHERE).one()
            with Session() as session:
                session.execute(WHERE).one()
            assert threads() - before
        left = left_over(before, time.monotonic() + 1.0)
        assert not left, f"threads still running after the router was left: {left}"


async def test_an_async_patroni_router_leaves_no_task_or_thread_behind(
    patroni_cluster: PatroniCluster,
) -> None:
    threads_before, tasks_before = threads(), tasks()
    for _ in range(3):
        router = Router.from_cluster(
            patroni_cluster.urls, patroni=patroni_cluster.rest_urls,
            monitor_interval=0.1,
        )  # fmt: skip
        Session = routing_sessionmaker(router)
        async with router:
            await router.poll()
            async with Session() as session:
                with read_only:
                    await session.execute(WHERE)
            assert tasks() - tasks_before  # the monitor runs
        deadline = time.monotonic() + 1.0
        left = await tasks_left_over(tasks_before, deadline)
        assert not left, f"tasks still running after the router was left: {left}"
        assert not left_over(threads_before, deadline)


def test_a_sync_patroni_router_with_a_hung_member_leaves_no_thread_behind(
    patroni: PatroniCluster,
) -> None:
    """A member whose REST API and server hang: a check waiting on it has its
    connection cut and ends at once; one still connecting to it (a blocking
    connect cannot be interrupted) ends at its connect timeout."""
    cluster = patroni.with_driver("psycopg2")
    leader = cluster.leader()
    hung = next(member for member in cluster.members if member is not leader)
    before = threads()
    router = SyncRouter.from_cluster(
        cluster.urls,
        patroni=cluster.rest_urls,
        monitor_interval=0.1,
        connect_timeout=CONNECT_TIMEOUT,
    )
    Session = routing_sync_sessionmaker(router)
    with router:
        router.poll()
        cluster.hang(hung, every_process=True)
        router.poll()
        with Session() as session:
            session.execute(WHERE).one()
    left = left_over(before, time.monotonic() + CONNECT_TIMEOUT + 1.0)
    assert not left, f"threads still running after the router was left: {left}"
