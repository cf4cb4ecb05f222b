"""A router with the Patroni source cleans up after itself: leaving it stops
every thread (the REST API's askers of the sync face) and task it started
within a second (issue J, section 3)."""

from __future__ import annotations

import time

import pytest

from routing_db import (
    Router,
    SyncRouter,
    routing_sync_sessionmaker,
)
from routing_db.testing import PatroniCluster

from ..leftovers import (
    WHERE,
    async_routers_leave_nothing,
    left_over,
    sync_routers_leave_nothing,
    threads,
)

# libpq counts connect_timeout in whole seconds, at least 2.
CONNECT_TIMEOUT = 2


@pytest.mark.parametrize("driver", ["psycopg2", "psycopg"])
def test_a_sync_patroni_router_leaves_no_thread_behind(
    patroni_cluster: PatroniCluster, driver: str
) -> None:
    cluster = patroni_cluster.with_driver(driver)
    sync_routers_leave_nothing(
        lambda: SyncRouter.from_cluster(
            cluster.urls, patroni=cluster.rest_urls, monitor_interval=0.1
        )
    )


async def test_an_async_patroni_router_leaves_no_task_or_thread_behind(
    patroni_cluster: PatroniCluster,
) -> None:
    cluster = patroni_cluster
    await async_routers_leave_nothing(
        lambda: Router.from_cluster(
            cluster.urls, patroni=cluster.rest_urls, monitor_interval=0.1
        )
    )


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
