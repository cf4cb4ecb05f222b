"""A router cleans up after itself: leaving ``with router:`` / ``async with
router:`` (or ``dispose()``) stops every thread and task it started, within a
second, on both faces (issue J, section 3)."""

from __future__ import annotations

import pytest

from routing_db import Router, SyncRouter
from routing_db.testing import PostgresCluster

from .leftovers import async_routers_leave_nothing, sync_routers_leave_nothing


@pytest.mark.parametrize("shape", ["from_urls", "from_cluster"])
@pytest.mark.parametrize("driver", ["psycopg2", "psycopg"])
def test_a_sync_router_leaves_no_thread_behind(
    schema: PostgresCluster, driver: str, shape: str
) -> None:
    cluster = schema.with_driver(driver)
    sync_routers_leave_nothing(
        lambda: (
            SyncRouter.from_urls(cluster.writer_url, cluster.replica_urls)
            if shape == "from_urls"
            else SyncRouter.from_cluster(cluster.urls)
        )
    )


@pytest.mark.parametrize("shape", ["from_urls", "from_cluster"])
async def test_an_async_router_leaves_no_task_or_thread_behind(
    cluster: PostgresCluster, shape: str
) -> None:
    await async_routers_leave_nothing(
        lambda: (
            Router.from_urls(cluster.writer_url, cluster.replica_urls)
            if shape == "from_urls"
            else Router.from_cluster(cluster.urls)
        )
    )
