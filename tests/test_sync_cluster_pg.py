"""``SyncRouter.from_cluster``: the writer found among the nodes and followed
through a failover, with threads, on real servers."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import text

from routing_db import SyncRouter, read_only, routing_sync_sessionmaker
from routing_db.testing import PostgresCluster

from .models import Item

NAMES = ["r0", "r1", "primary"]
WHERE = text("SELECT inet_server_port(), pg_is_in_recovery()")


@pytest.fixture
def nodes(schema: PostgresCluster) -> Iterator[PostgresCluster]:
    """The cluster (psycopg2 URLs), its items empty; healed afterwards."""
    if not schema.owned:
        pytest.skip("fault injection needs a cluster started by this test run")
    cluster = schema.with_driver("psycopg2")
    cluster.sql(cluster.primary, "TRUNCATE items RESTART IDENTITY")
    cluster.wait_replicated()
    try:
        yield cluster
    finally:
        cluster.heal()


def cluster_router(cluster: PostgresCluster, **options: Any) -> SyncRouter:
    """The nodes listed with the primary last: nothing says which it is."""
    urls = [*cluster.replica_urls, cluster.writer_url]
    return SyncRouter.from_cluster(urls, names=NAMES, **options)


def test_the_writer_is_found_and_followed_through_a_failover(
    nodes: PostgresCluster,
) -> None:
    cluster = nodes
    router = cluster_router(cluster, monitor_interval=0.2, writer_wait_timeout=20)
    Session = routing_sync_sessionmaker(router)
    read_errors: list[BaseException] = []
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            try:
                with Session() as session, read_only:
                    session.execute(WHERE).one()
            except Exception as exc:  # counted: the test wants none
                read_errors.append(exc)

    with router:
        with Session() as session:
            session.add(Item(name="before"))
            session.flush()
            assert tuple(session.execute(WHERE).one()) == (cluster.primary.port, False)
            session.commit()
        roles = {row["name"]: row["role"] for row in router.status()}
        assert roles == {"writer": "writer", "r0": "replica", "r1": "replica",
                         "primary": "writer"}  # fmt: skip
        readers = [threading.Thread(target=read) for _ in range(8)]
        for thread in readers:
            thread.start()
        try:
            cluster.crash_primary()
            # As a failover manager decides: a second after the crash.
            promote = threading.Timer(1.0, cluster.promote, args=(0,))
            promote.start()
            with Session() as session:  # waits for the next primary
                session.add(Item(name="after"))
                session.flush()
                where = tuple(session.execute(WHERE).one())
                session.commit()
            promote.join()
            assert where == (cluster.replicas[0].port, False)
            deadline = time.monotonic() + 5
            while {r["name"]: r["role"] for r in router.status()}["r0"] != "writer":
                assert time.monotonic() < deadline, router.status()
                time.sleep(0.05)
        finally:
            stop.set()
            for thread in readers:
                thread.join()
    names = cluster.sql(cluster.replicas[0], "SELECT string_agg(name, ',') FROM items")
    assert sorted(names.split(",")) == ["after", "before"]
    assert read_errors == []
