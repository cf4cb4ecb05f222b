"""Hosts that never answer: a connect is bounded by ``connect_timeout``."""

from __future__ import annotations

import math
import time

import pytest
from sqlalchemy.engine import make_url

from routing_db import Router, read_only, routing_sessionmaker
from routing_db.testing import PostgresCluster

from .blackhole import Blackhole
from .conftest import where
from .routers import RouterMaker

CONNECT_TIMEOUT = 2.0
# A read that paid no connect bound, with room for a loaded 2-core machine.
QUICK = 1.0


def bound(driver: str) -> float:
    """The connect bound the driver applies (libpq: whole seconds, at least 2)."""
    if driver == "psycopg":
        return max(2, math.ceil(CONNECT_TIMEOUT))
    return CONNECT_TIMEOUT


async def timed_read(Session: object) -> tuple[float, int]:
    started = time.monotonic()
    async with Session() as session, read_only:  # type: ignore[operator]
        port, standby = await where(session)
    assert standby
    return time.monotonic() - started, port


@pytest.mark.parametrize("kind", ["silent", "unaccepted"])
async def test_a_blackholed_replica_costs_one_bounded_connect(
    cluster: PostgresCluster,
    kind: str,
    make_router: RouterMaker,
) -> None:
    other = cluster.replicas[1]
    with Blackhole(kind) as hole:
        url = make_url(cluster.replica_urls[0]).set(port=hole.port)
        router = make_router(
            cluster.writer_url,
            [url, cluster.replica_urls[1]],
            connect_timeout=CONNECT_TIMEOUT,
        )
        Session = routing_sessionmaker(router)
        # No monitor: the first read tries the hole, within the bound,
        # and runs on the other replica; the hole is ejected.
        took, port = await timed_read(Session)
        assert port == other.port
        assert took < bound(cluster.driver) + QUICK
        assert router.status()[1]["ejected"]
        for _ in range(10):
            took, port = await timed_read(Session)
            assert (port, took < QUICK) == (other.port, True)


async def test_with_a_monitor_no_read_probes_a_blackholed_replica(
    cluster: PostgresCluster,
) -> None:
    other = cluster.replicas[1]
    with Blackhole("silent") as hole:
        url = make_url(cluster.replica_urls[0]).set(port=hole.port)
        router = Router.from_urls(
            cluster.writer_url,
            [url, cluster.replica_urls[1]],
            connect_timeout=CONNECT_TIMEOUT,
            monitor_interval=0.1,
        )
        Session = routing_sessionmaker(router)
        async with router:  # the monitor's first round ejects it
            assert router.status()[1]["ejected"]
            until = time.monotonic() + 2 * bound(cluster.driver)
            while time.monotonic() < until:  # past several probe times
                took, port = await timed_read(Session)
                assert (port, took < QUICK) == (other.port, True)
            assert router.status()[1]["ejected"]  # the monitor's probes fail
