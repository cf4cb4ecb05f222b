"""The sync face on MariaDB (pymysql): routing, read_only, GTID read-your-writes
and a crashed replica, each statement's server asked of the server."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from sqlalchemy import select, text
from sqlalchemy.orm import Session, sessionmaker
from tenacity import wait_none

from routing_db import (
    ReadOnlyViolation,
    RetryPolicy,
    RoutingSyncSession,
    SyncRouter,
    current_causal_token,
    read_only,
    routing_sync_sessionmaker,
)
from routing_db.testing import MariaDBCluster

from .models import Item
from .routers import RouterMaker
from .test_mariadb import CONNECTION_ID, PRIMARY, WHERE, end_connection, items_ddl

pytestmark = pytest.mark.mariadb

Maker = sessionmaker[RoutingSyncSession]


@pytest.fixture
def db(mariadb_cluster: MariaDBCluster) -> Iterator[MariaDBCluster]:
    """The cluster with an empty items table, healed after the test."""
    ddl = items_ddl()
    mariadb_cluster.sql(mariadb_cluster.primary, f"USE app; {ddl}; TRUNCATE app.items")
    mariadb_cluster.wait_replicated()
    try:
        yield mariadb_cluster
    finally:
        mariadb_cluster.heal()


@pytest.fixture
def router(db: MariaDBCluster, make_router: RouterMaker) -> SyncRouter:
    # No time window: only GTID positions stand between a read and stale data.
    router = make_router.sync(
        db.primary.url_for("pymysql"),
        [node.url_for("pymysql") for node in db.replicas],
        retry=RetryPolicy(attempts=3, wait=wait_none()),
        monitor_interval=0.1,
        sticky_seconds=0,
    )
    router.start()
    return router


@pytest.fixture
def Sync(router: SyncRouter) -> Maker:
    return routing_sync_sessionmaker(router, expire_on_commit=False)


def where(session: Session) -> tuple[int, bool, bool]:
    """(server_id, server read_only, this transaction read-only) where it ran."""
    server, global_ro, session_ro = session.execute(WHERE).one()
    return int(server), bool(global_ro), bool(session_ro)


def test_writes_go_to_the_primary_and_reads_to_read_only_replicas(
    db: MariaDBCluster, Sync: Maker
) -> None:
    with Sync() as session:
        session.add(Item(name="x"))
        session.flush()
        assert where(session) == (PRIMARY, False, False)
        session.commit()
    db.wait_replicated()  # else read-your-writes keeps this context's reads home
    served = set()
    for _ in range(4):
        with Sync() as session, read_only:
            server, global_ro, session_ro = where(session)
            assert global_ro and session_ro
            served.add(server)
            with pytest.raises(ReadOnlyViolation):
                session.execute(text("DELETE FROM items"))
    assert served == {node.server_id for node in db.replicas}
    assert db.sql(db.primary, "SELECT COUNT(*) FROM app.items") == "1"


def test_read_your_writes_by_gtid_while_replicas_apply_nothing(
    db: MariaDBCluster, Sync: Maker
) -> None:
    for index in range(len(db.replicas)):
        db.stop_applying(index)
    for n in range(10):
        with Sync() as session:
            session.add(Item(name=f"row{n}"))
            session.commit()
        token = current_causal_token()
        gtid = db.sql(db.primary, "SELECT @@global.gtid_binlog_pos")
        assert token is not None and token.startswith(f"gtid:{gtid}~d0~")
        with Sync() as session, read_only:
            assert f"row{n}" in set(session.scalars(select(Item.name)))
            assert where(session)[0] == PRIMARY  # nobody else has it


def test_a_crashed_replica_fails_no_read_and_comes_back(
    db: MariaDBCluster, router: SyncRouter, Sync: Maker
) -> None:
    db.crash_replica(0)
    served = []
    for _ in range(20):
        with Sync() as session, read_only:
            served.append(where(session)[0])
    assert set(served) == {db.replicas[1].server_id}
    assert router.status()[1]["ejected"] is True
    db.start_replica(0)
    deadline = time.monotonic() + 10
    while router.status()[1]["ejected"]:  # the monitor thread re-admits it
        assert time.monotonic() < deadline
        time.sleep(0.05)
    served_after = set()
    for _ in range(4):
        with Sync() as session, read_only:
            served_after.add(where(session)[0])
    assert served_after == {node.server_id for node in db.replicas}


def test_a_write_on_a_pooled_connection_the_server_ended_is_not_lost(
    db: MariaDBCluster,
    make_router: RouterMaker,
) -> None:
    """pymysql, too, finds out only when a statement sent on the dead
    connection fails: the checkout check must find the server's goodbye."""
    router = make_router.sync(
        db.primary.url_for("pymysql"),
        [node.url_for("pymysql") for node in db.replicas],
        pool_size=1,
        max_overflow=0,
        ping_after_idle=60,
        retry=RetryPolicy(attempts=3, wait=wait_none()),
    )
    Sync = routing_sync_sessionmaker(router)
    with Sync() as session:
        session.add(Item(name="before"))
        session.flush()
        first = session.scalar(CONNECTION_ID)
        session.commit()
    end_connection(db, first)
    with Sync() as session:
        session.add(Item(name="after"))
        session.flush()
        assert session.scalar(CONNECTION_ID) != first
        session.commit()
    names = db.sql(db.primary, "SELECT name FROM app.items ORDER BY id")
    assert names.split() == ["before", "after"]
