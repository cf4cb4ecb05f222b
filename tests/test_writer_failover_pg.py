"""A static router whose writer stops being the primary, and becomes one again.

The writer URL's server is really demoted (crash, promote a standby, rewind
the old primary as its standby) and promoted back; writes must then wait and
fail as ``NoWriterAvailable``, never as ``ReadOnlyViolation``.
"""

from __future__ import annotations

import time

import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from routing_db import (
    NoWriterAvailable,
    ReadOnlyViolation,
    Router,
    RoutingListener,
    routing_sessionmaker,
)
from routing_db.metrics import register_metrics
from routing_db.testing import PostgresCluster

from .models import Item
from .routers import RouterMaker

INSERT = text("INSERT INTO items (name) VALUES (:name)")


class RoleLog(RoutingListener):
    """Records the router's role changes."""

    def __init__(self) -> None:
        self.changes: list[tuple[str, str, str]] = []

    def role_changed(self, engine: str, old: str, new: str) -> None:
        self.changes.append((engine, old, new))


@pytest.mark.slow  # a failover and a rewind take seconds
@pytest.mark.usefixtures("clean")
async def test_a_demoted_writer_is_waited_for_then_no_writer(
    faults: PostgresCluster,
    make_router: RouterMaker,
) -> None:
    cluster = faults
    # No monitor: what the writer answers is all the router learns.
    router = make_router(
        cluster.writer_url, cluster.replica_urls[1:], writer_wait_timeout=1.0
    )
    roles = RoleLog()
    router.add_listener(roles)
    registry = CollectorRegistry()
    register_metrics(router, registry)
    Session = routing_sessionmaker(router)
    writer = router.status()[0]["name"]

    def metric(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(f"routing_db_{name}", labels)

    assert metric("writer_available", engine=writer) == 1.0
    async with Session() as session:
        session.add(Item(name="before"))
        await session.commit()

    await cluster.acrash_primary()
    await cluster.apromote(0)
    await cluster.arebuild_as_standby(cluster.primary, of=0)
    started = time.monotonic()
    with pytest.raises(NoWriterAvailable, match="not the primary") as caught:
        async with Session() as session:  # the first statement: waited for
            await session.execute(INSERT, {"name": "refused"})
    waited = time.monotonic() - started
    assert not isinstance(caught.value, ReadOnlyViolation)
    assert 1.0 <= waited < 10
    assert roles.changes == [(writer, "writer", "unknown")]
    assert router.status()[0]["role"] == "unknown"
    assert metric("writer_available", engine=writer) == 0.0
    assert metric("role_changes_total", engine=writer, role="unknown") == 1.0
    with pytest.raises(NoWriterAvailable):
        async with Session() as session:  # a flush waits the same way
            session.add(Item(name="refused too"))
            await session.commit()

    # The same node takes writes again: no restart of the application.
    await cluster.apromote(cluster.primary)
    async with Session() as session:
        session.add(Item(name="after"))
        await session.commit()
    assert roles.changes[-1] == (writer, "unknown", "writer")
    assert router.status()[0]["role"] == "writer"
    assert metric("writer_available", engine=writer) == 1.0
    names = cluster.sql(cluster.primary, "SELECT string_agg(name, ',') FROM items")
    assert sorted(names.split(",")) == ["after", "before"]


@pytest.mark.usefixtures("clean")
async def test_a_read_only_transaction_of_the_application_is_not_a_failover(
    router: Router,
) -> None:
    Session = routing_sessionmaker(router)
    async with Session() as session:
        await session.execute(text("SET TRANSACTION READ ONLY"))
        with pytest.raises(DBAPIError) as caught:
            await session.execute(text("INSERT INTO items (name) VALUES ('no')"))
    assert not isinstance(caught.value, NoWriterAvailable | ReadOnlyViolation)
    assert router.topology.writer_ok
    async with Session() as session:  # and the writer's pool still serves
        session.add(Item(name="yes"))
        await session.commit()
