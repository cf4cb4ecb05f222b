"""Ejection, re-admission, fallback and lag limits with real faults."""

from __future__ import annotations

import asyncio
import gc
import logging
import time
import warnings
from collections import Counter
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import async_sessionmaker

from routing_db import (
    NoReplicaAvailable,
    Router,
    RoutingSession,
    read_only,
    routing_sessionmaker,
)
from routing_db.testing import PostgresCluster

from .conftest import where
from .routers import RouterMaker


async def until(check: Callable[[], bool], within: float, what: str) -> float:
    """Poll ``check`` until it holds; return how long it took."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > within:
            raise AssertionError(f"not within {within} s: {what}")
        await asyncio.sleep(0.05)
    return time.monotonic() - start


async def reads(
    Session: async_sessionmaker[RoutingSession], n: int
) -> tuple[Counter[tuple[int, bool]], int]:
    """``n`` read_only reads: where each ran (server-reported) and the failures."""
    served: Counter[tuple[int, bool]] = Counter()
    failed = 0
    for _ in range(n):
        try:
            async with Session() as session, read_only:
                served[await where(session)] += 1
        except Exception:
            logging.getLogger(__name__).exception("read failed")
            failed += 1
    return served, failed


@pytest.fixture
async def monitored(cluster: PostgresCluster) -> AsyncIterator[Router]:
    router = Router.from_urls(
        cluster.writer_url, cluster.replica_urls, monitor_interval=0.1
    )
    async with router:
        yield router


def replica_state(router: Router, index: int) -> dict[str, Any]:
    return router.status()[1 + index]


async def test_status_after_start_shows_health_and_lag(
    monitored: Router, cluster: PostgresCluster
) -> None:
    await cluster.await_replicated()
    await until(
        lambda: all(r["lag_bytes"] == 0 for r in monitored.status()[1:]),
        5,
        "replicas caught up",
    )
    for _ in range(3):
        await monitored.poll()
        for row in monitored.status()[1:]:
            assert row["healthy"] is True
            assert row["eligible"] is True
            # An idle primary: no lag in seconds either, however old the last
            # replayed transaction is.
            assert row["lag_seconds"] == 0.0


async def test_a_stopped_replica_is_ejected_and_readmitted(
    monitored: Router, faults: PostgresCluster
) -> None:
    Session = routing_sessionmaker(monitored)
    survivor = (faults.replicas[1].port, True)
    faults.stop_replica(0)
    served, failed = await reads(Session, 200)
    assert failed == 0
    assert set(served) == {survivor}
    assert replica_state(monitored, 0)["ejected"] is True

    faults.start_replica(0)
    took = await until(
        lambda: replica_state(monitored, 0)["healthy"], 5, "replica re-admitted"
    )
    assert took < 5
    served, failed = await reads(Session, 10)
    assert failed == 0
    assert (faults.replicas[0].port, True) in served


async def test_readmitted_without_a_monitor_too(
    router: Router, faults: PostgresCluster
) -> None:
    """The half-open probe: an ejected replica is tried again after a backoff."""
    Session = routing_sessionmaker(router)
    faults.stop_replica(0)
    served, failed = await reads(Session, 20)
    assert failed == 0
    assert (faults.replicas[0].port, True) not in served
    faults.start_replica(0)

    async def back() -> bool:
        served, _ = await reads(Session, 2)
        return (faults.replicas[0].port, True) in served

    deadline = time.monotonic() + 10
    while not await back():
        assert time.monotonic() < deadline, "ejected replica never tried again"
        await asyncio.sleep(0.1)


async def test_a_replica_that_could_not_connect_is_not_kept_by_the_transaction(
    router: Router, faults: PostgresCluster
) -> None:
    """Later in a transaction a failed connect is raised, and the next read of
    that transaction chooses again instead of staying on the dead replica."""
    Session = routing_sessionmaker(router)
    survivor = (faults.replicas[1].port, True)
    faults.stop_replica(0)
    first_failed = 0
    for _ in range(6):
        async with Session() as session:
            # The transaction holds a writer connection: no longer "first".
            assert (await where(session))[1] is False
            try:
                async with read_only:
                    assert await where(session) == survivor
            except (DBAPIError, OSError):  # asyncpg: refused is an OSError
                first_failed += 1
            async with read_only:
                assert await where(session) == survivor
    # Round robin sent some transactions' first read to the stopped replica.
    assert first_failed > 0


async def test_all_replicas_down_fall_back_or_raise(
    cluster: PostgresCluster,
    faults: PostgresCluster,
    ports: dict[str, Any],
    make_router: RouterMaker,
) -> None:
    faults.stop_replica(0)
    faults.crash_replica(1)
    router = make_router(cluster.writer_url, cluster.replica_urls)
    strict = make_router(
        cluster.writer_url, cluster.replica_urls, fallback_to_writer=False
    )
    served, failed = await reads(routing_sessionmaker(router), 20)
    assert failed == 0
    assert set(served) == {(ports["writer"], False)}
    assert router.fallbacks_total == 20

    with pytest.raises(NoReplicaAvailable):
        async with routing_sessionmaker(strict)() as session, read_only:
            await session.execute(text("SELECT 1"))


async def test_writer_fallbacks_are_capped(
    cluster: PostgresCluster, faults: PostgresCluster, make_router: RouterMaker
) -> None:
    faults.stop_replica(0)
    faults.stop_replica(1)
    router = make_router(
        cluster.writer_url, cluster.replica_urls, max_writer_fallbacks=2
    )
    Session = routing_sessionmaker(router)
    async with Session() as one, Session() as two, read_only:
        assert (await where(one))[1] is False
        assert (await where(two))[1] is False
        with pytest.raises(NoReplicaAvailable, match="max_writer_fallbacks"):
            async with Session() as three:
                await three.execute(text("SELECT 1"))
    # Ending those transactions gives the slots back.
    async with Session() as four, read_only:
        assert (await where(four))[1] is False
    assert router.topology.fallbacks == 0
    # So does a session dropped without close(), once it is collected.
    dropped = Session()
    async with read_only:
        assert (await where(dropped))[1] is False
    assert router.topology.fallbacks == 1
    with warnings.catch_warnings():
        # SQLAlchemy warns that the dropped session's connection was
        # garbage collected: that is the point here.
        warnings.simplefilter("ignore")
        del dropped
        gc.collect()
    assert router.topology.fallbacks == 0


async def test_crash_while_sessions_hold_replica_connections(
    router: Router, faults: PostgresCluster
) -> None:
    Session = routing_sessionmaker(router)
    crashed = faults.replicas[0].port
    holders = []
    for _ in range(4):
        session = Session()
        async with read_only:
            port, _ = await where(session)
        holders.append((session, port))
    faults.crash_replica(0)
    # Sessions on the crashed replica end cleanly; new reads go elsewhere.
    for session, _ in holders:
        await session.close()
    assert router.status()[1]["pool"]["checked_out"] == 0
    served, failed = await reads(Session, 30)
    assert failed == 0
    assert all(port != crashed for port, _ in served)
    assert any(port == crashed for _, port in holders)


@pytest.mark.usefixtures("clean")
async def test_a_lagging_replica_is_skipped_until_it_catches_up(
    cluster: PostgresCluster, faults: PostgresCluster, ports: dict[str, Any]
) -> None:
    router = Router.from_urls(
        cluster.writer_url,
        cluster.replica_urls,
        monitor_interval=0.1,
        max_lag_bytes=256 * 1024,
    )
    Session = routing_sessionmaker(router)
    lagging = (faults.replicas[0].port, True)
    async with router:
        faults.pause_replay(0)
        # Write until the paused replica is over the byte limit.
        while not replica_state(router, 0)["lagging"]:
            async with Session.begin() as session:
                await session.execute(
                    text(
                        "INSERT INTO items (name) SELECT repeat('x', 90) "
                        "FROM generate_series(1, 500)"
                    )
                )
            await router.poll()
        assert replica_state(router, 0)["lag_bytes"] > 256 * 1024
        served, failed = await reads(Session, 30)
        assert failed == 0
        assert lagging not in served
        assert set(served) == {(faults.replicas[1].port, True)}

        faults.resume_replay(0)
        await until(
            lambda: not replica_state(router, 0)["lagging"], 5, "lag back under"
        )
        served, _ = await reads(Session, 10)
        assert lagging in served
    assert ports["writer"] not in {port for port, _ in served}


class SecondsOnly:
    """A router judged by lag in seconds alone, whose monitor rounds the test
    makes (the monitor's rule is the same for both faces: one will do)."""

    def __init__(
        self, faults: PostgresCluster, make_router: RouterMaker, max_lag_seconds: float
    ) -> None:
        self.router = make_router(
            faults.writer_url,
            faults.replica_urls,
            monitor_interval=60,
            max_lag_seconds=max_lag_seconds,
            max_lag_bytes=None,
        )

    async def polled(self) -> dict[str, Any]:
        """Replica 0's state after one round made now."""
        await self.router.poll()
        return replica_state(self.router, 0)

    async def until_lagging(self, lagging: bool) -> dict[str, Any]:
        """Poll until replica 0 is (or is no longer) over the limit."""
        deadline = time.monotonic() + 10
        while (state := await self.polled())["lagging"] is not lagging:
            assert time.monotonic() < deadline, state
            await asyncio.sleep(0.1)
        return state


async def test_a_quiet_writer_s_wal_without_a_transaction_is_not_lag(
    asyncpg_faults: PostgresCluster, make_router: RouterMaker
) -> None:
    """A replica a few bytes behind a quiet writer (a CHECKPOINT record) is not
    as far behind as its last replayed transaction is old; one that stays
    behind still goes over the limit."""
    faults = asyncpg_faults
    judged = SecondsOnly(faults, make_router, max_lag_seconds=3.0)
    replica = faults.replicas[0]

    def transaction_age() -> float:
        return float(
            faults.sql(
                replica,
                "SELECT extract(epoch FROM clock_timestamp() "
                "- pg_last_xact_replay_timestamp())",
            )
        )

    async with judged.router:
        await until(lambda: transaction_age() > 4.0, 15, "an old last transaction")
        deadline = time.monotonic() + 10
        while (await judged.polled())["lag_bytes"] != 0:  # a round it had all
            assert time.monotonic() < deadline, judged.router.status()
        faults.pause_replay(0)
        faults.sql(faults.primary, "CHECKPOINT")  # WAL, but no transaction
        state = await judged.polled()
        assert state["lag_bytes"] > 0, state
        assert transaction_age() > 4.0
        assert state["lag_seconds"] < 3.0, state
        assert not state["lagging"] and state["eligible"], state

        # Still behind: the bound grows with the time since it had all.
        assert (await judged.until_lagging(True))["lag_seconds"] > 3.0
        faults.resume_replay(0)
        await judged.until_lagging(False)


async def test_a_standby_that_replayed_no_transaction_yet_still_has_lag(
    asyncpg_faults: PostgresCluster, make_router: RouterMaker
) -> None:
    """A standby that has replayed no transaction since it started has no age
    of one (NULL): held back, it still goes over max_lag_seconds."""
    faults = asyncpg_faults
    replica = faults.replicas[0]
    # Its restart replays from its last restartpoint: make that a checkpoint
    # after every commit, so that it starts with no transaction to replay.
    faults.sql(faults.primary, "CHECKPOINT")
    faults.wait_replicated()
    faults.stop_replica(0)
    faults.start_replica(0)
    judged = SecondsOnly(faults, make_router, max_lag_seconds=1.0)

    def apply_delay(setting: str) -> None:
        faults.sql(replica, f"ALTER SYSTEM {setting}")
        faults.sql(replica, "SELECT pg_reload_conf()")

    try:
        # Every commit from now on waits an hour before it is replayed.
        apply_delay("SET recovery_min_apply_delay = '1h'")
        async with judged.router:
            assert not (await judged.polled())["lagging"]
            faults.sql(faults.primary, "CREATE TABLE IF NOT EXISTS held_back (n int)")
            never = "SELECT pg_last_xact_replay_timestamp() IS NULL"
            assert faults.sql(replica, never) == "t"
            state = await judged.until_lagging(True)
            assert state["lag_seconds"] > 1.0 and not state["eligible"], state
            assert faults.sql(replica, never) == "t"
            apply_delay("RESET recovery_min_apply_delay")
            await judged.until_lagging(False)
    finally:
        apply_delay("RESET recovery_min_apply_delay")
        faults.sql(faults.primary, "DROP TABLE IF EXISTS held_back")


async def test_a_full_pool_is_skipped_not_ejected(
    cluster: PostgresCluster, make_router: RouterMaker
) -> None:
    router = make_router(
        cluster.writer_url,
        cluster.replica_urls,
        replica_kwargs={"pool_size": 1, "max_overflow": 0, "pool_timeout": 0.2},
        monitor_interval=0.1,
    )
    Session = routing_sessionmaker(router)
    async with router.replicas[0].connect():  # its only connection, held
        served, failed = await reads(Session, 4)
        assert failed == 0
        assert set(served) == {(cluster.replicas[1].port, True)}
        await router.poll()
        assert replica_state(router, 0)["ejected"] is False
    served, _ = await reads(Session, 4)
    assert (cluster.replicas[0].port, True) in served
