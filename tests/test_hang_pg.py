"""A replica host that hangs: every process stopped (SIGSTOP), its sockets open.

Nothing closes, so no driver notices: only ``replica_read_timeout`` ends the
reads caught on it, which run again on the other replica.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from dataclasses import dataclass, field

import pytest
from sqlalchemy import text

from routing_db import (
    ReplicaReadTimeout,
    Router,
    is_transient_error,
    read_only,
    routing_sessionmaker,
)
from routing_db.testing import PostgresCluster

from .bounds import pg_sleeping, stopped_on_the_server
from .conftest import where
from .routers import RouterMaker
from .waiting import until

pytestmark = pytest.mark.slow  # ten seconds of a hung host, on the real clock

READ_TIMEOUT = 1.0
CONNECT_TIMEOUT = 2.0  # libpq's least
READERS = 50
HANG = 10.0
# A read's worst case in the hang: the bound, then its rerun elsewhere, with
# room for 50 tasks on a loaded 2-core machine.
WORST = READ_TIMEOUT + 0.5


@dataclass
class Reads:
    """What the readers saw, by phase."""

    phase: str = "before"
    latencies: dict[str, list[float]] = field(default_factory=dict)
    ports: dict[str, set[int]] = field(default_factory=dict)
    errors: list[BaseException] = field(default_factory=list)

    def record(self, phase: str, took: float, port: int) -> None:
        self.latencies.setdefault(phase, []).append(took)
        self.ports.setdefault(phase, set()).add(port)

    def longest(self) -> float:
        return max(max(took) for took in self.latencies.values())

    def __repr__(self) -> str:
        worst = {phase: max(took) for phase, took in self.latencies.items()}
        return f"<Reads longest by phase {worst}>"

    def p99(self, phase: str) -> float:
        return statistics.quantiles(self.latencies[phase], n=100)[98]

    def rate(self, phase: str, seconds: float) -> float:
        return len(self.latencies[phase]) / seconds


async def read_until(Session: object, reads: Reads, stop: asyncio.Event) -> None:
    while not stop.is_set():
        # A read counts in the phase it started in, however long it took.
        phase, started = reads.phase, time.monotonic()
        try:
            async with Session() as session, read_only:  # type: ignore[operator]
                port, standby = await where(session)
        except Exception as exc:  # counted: the test wants none
            reads.errors.append(exc)
            continue
        assert standby
        reads.record(phase, time.monotonic() - started, port)


async def test_reads_on_a_hung_replica_are_bounded_and_served_elsewhere(
    faults: PostgresCluster,
) -> None:
    cluster = faults
    hung, other = cluster.replicas
    router = Router.from_urls(
        cluster.writer_url,
        cluster.replica_urls,
        monitor_interval=0.2,
        replica_read_timeout=READ_TIMEOUT,
        connect_timeout=CONNECT_TIMEOUT,
    )
    Session = routing_sessionmaker(router)
    reads, stop = Reads(), asyncio.Event()
    async with router:
        readers = []
        for _ in range(READERS):
            readers.append(asyncio.create_task(read_until(Session, reads, stop)))
        try:
            await asyncio.sleep(2.0)  # the healthy rate, measured
            reads.phase = "hung"
            await cluster.ahang_replica(0)
            await asyncio.sleep(HANG)
            reads.phase = "after"
            await cluster.aresume_replica(0)
            resumed = time.monotonic()
            # Re-admitted (the monitor's probe), and serving: server-checked.
            await until(lambda: hung.port in reads.ports.get("after", set()), 5.0)
            readmitted = time.monotonic() - resumed
        finally:
            stop.set()
            await asyncio.gather(*readers)
    assert reads.errors == []
    assert reads.ports["before"] == {hung.port, other.port}
    assert reads.p99("hung") <= WORST, reads.p99("hung")
    # None waited out the hang, not even those in flight when it began: a
    # read caught in a statement waits the read bound; one caught opening a
    # connection (the pools open and close overflow connections all along)
    # gives up once the replica is ejected, before connect_timeout.
    assert reads.longest() <= WORST + 0.5, reads.longest()
    assert reads.rate("hung", HANG) >= 0.5 * reads.rate("before", 2.0)
    assert readmitted < 5.0


async def test_a_later_statement_on_a_hung_replica_raises_a_typed_error(
    faults: PostgresCluster,
    make_router: RouterMaker,
) -> None:
    cluster = faults
    router = make_router(
        cluster.writer_url,
        cluster.replica_urls[:1],
        replica_read_timeout=READ_TIMEOUT,
    )
    Session = routing_sessionmaker(router)
    try:
        async with Session() as session, read_only:
            assert (await where(session))[1]
            await cluster.ahang_replica(0)
            started = time.monotonic()
            with pytest.raises(ReplicaReadTimeout) as caught:
                await where(session)
            assert time.monotonic() - started < WORST
            assert caught.value.connection_invalidated
            assert is_transient_error(caught.value)  # unit_of_work reruns it
        assert router.status()[1]["ejected"]
    finally:
        await cluster.aresume_replica(0)


async def test_a_statement_past_the_bound_is_stopped_on_the_server(
    cluster: PostgresCluster,
    make_router: RouterMaker,
) -> None:
    # A server that is only slow: the statement must not run on after the
    # client gave up on it.
    replica = cluster.replicas[0]
    router = make_router(
        cluster.writer_url, cluster.replica_urls[:1], replica_read_timeout=READ_TIMEOUT
    )
    Session = routing_sessionmaker(router)

    sleeping = pg_sleeping(cluster, replica)

    slow = text("SELECT pg_sleep(30)")
    await stopped_on_the_server(Session, pin=where, slow=slow, running=sleeping)


async def test_the_checkout_ping_on_a_hung_replica_is_bounded(
    faults: PostgresCluster,
    make_router: RouterMaker,
) -> None:
    """A pooled connection idle past ping_after_idle is pinged at checkout:
    on a host that hangs, that ping is bounded like a statement (CI once saw
    a read wait out the whole hang there)."""
    cluster = faults
    router = make_router(
        cluster.writer_url,
        cluster.replica_urls[:1],
        replica_read_timeout=READ_TIMEOUT,
        ping_after_idle=0.1,
    )
    Session = routing_sessionmaker(router)
    try:
        async with Session() as session, read_only:
            assert (await where(session))[1]  # a pooled replica connection
        await asyncio.sleep(0.3)  # idle past ping_after_idle: pinged next
        await cluster.ahang_replica(0)
        started = time.monotonic()
        async with asyncio.timeout(10), Session() as session, read_only:
            port, standby = await where(session)  # unbounded: waits out the hang
        took = time.monotonic() - started
        # Ejected by the ping's timeout: the writer serves (the only replica).
        assert (port, standby) == (cluster.primary.port, False)
        assert took < WORST + 0.5, took
    finally:
        await cluster.aresume_replica(0)


async def test_a_monitor_round_with_a_hung_replica_is_bounded(
    faults: PostgresCluster,
    make_router: RouterMaker,
) -> None:
    """The monitor's check of a hung replica gives up at its bound and does not
    wait for the driver to cancel the statement on the host (psycopg would
    ask it, and wait 10 s for an answer that never comes)."""
    cluster = faults
    router = make_router(
        cluster.writer_url, cluster.replica_urls[:1], monitor_interval=0.2
    )
    bound = router.health.check_timeout
    Session = routing_sessionmaker(router)
    try:
        async with Session() as session, read_only:
            assert (await where(session))[1]  # a pooled replica connection
        await cluster.ahang_replica(0)
        for _ in range(2):  # the pooled connection, then a new one
            started = time.monotonic()
            await router.poll()
            took = time.monotonic() - started
            assert took < bound + 1.0, took
            assert router.status()[1]["state"] != "serving"
    finally:
        await cluster.aresume_replica(0)
