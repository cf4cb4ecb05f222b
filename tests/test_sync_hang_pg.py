"""A replica host that hangs, under the sync face: libpq would wait for ever;
``replica_read_timeout`` ends the reads caught on it, which run again on the
other replica (psycopg2 and psycopg's sync connection, threads)."""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import tenacity
from sqlalchemy import orm, text

from routing_db import (
    CommitOutcomeUnknown,
    ReplicaReadTimeout,
    RetryPolicy,
    SyncRouter,
    is_transient_error,
    read_only,
    routing_sync_sessionmaker,
    unit_of_work,
)
from routing_db._topology.discovery import ROLE_CHECK
from routing_db.testing import PostgresCluster

from .bounds import pg_sleeping
from .conftest import healed
from .models import Item
from .routers import RouterMaker
from .test_hung_primary_pg import begun_after
from .waiting import until_sync

pytestmark = pytest.mark.slow  # seconds of a hung host, on the real clock

READ_TIMEOUT = 1.0
CONNECT_TIMEOUT = 2.0  # libpq's least
READERS = 16
HANG = 5.0
WHERE = text("SELECT inet_server_port(), pg_is_in_recovery()")
# The new primary is found within two monitor rounds of at most the check
# bound (2 s) each for the hung node's role and health; room for 2 cores.
WRITES_RESUME = 2 * 2 * 2.0 + 2.0


@pytest.fixture(params=["psycopg2", "psycopg"])
def hung(
    schema: PostgresCluster, request: pytest.FixtureRequest
) -> Iterator[PostgresCluster]:
    """The cluster's sync URLs; healed (every replica resumed) afterwards."""
    yield from healed(schema.with_driver(request.param))


def test_reads_on_a_hung_replica_are_bounded_and_served_elsewhere(
    hung: PostgresCluster,
) -> None:
    cluster = hung
    router = SyncRouter.from_urls(
        cluster.writer_url,
        cluster.replica_urls,
        replica_read_timeout=READ_TIMEOUT,
        connect_timeout=CONNECT_TIMEOUT,
        monitor_interval=0.2,
        pool_size=READERS,
    )
    Session = routing_sync_sessionmaker(router)
    latencies: dict[str, list[float]] = {}
    errors: list[BaseException] = []
    phase = ["before"]
    stop = threading.Event()
    hung_port = cluster.replicas[0].port
    served_after: set[int] = set()

    def read() -> None:
        while not stop.is_set():
            started, now = time.monotonic(), phase[0]
            try:
                with Session() as session, read_only:
                    port, standby = session.execute(WHERE).one()
                assert standby
            except Exception as exc:  # counted: the test wants none
                errors.append(exc)
                continue
            latencies.setdefault(now, []).append(time.monotonic() - started)
            if now == "after":
                served_after.add(int(port))

    with router:
        readers = [threading.Thread(target=read) for _ in range(READERS)]
        for thread in readers:
            thread.start()
        try:
            time.sleep(1.0)  # load under way before the fault (not a wait for state)
            phase[0] = "hung"
            cluster.hang_replica(0)
            time.sleep(HANG)  # the hang itself lasts this long
            cluster.resume_replica(0)
            phase[0] = "after"
            deadline = time.monotonic() + 5
            while hung_port not in served_after:  # re-admitted by the monitor
                assert time.monotonic() < deadline, "not re-admitted within 5 s"
                time.sleep(0.05)
        finally:
            stop.set()
            for thread in readers:
                thread.join()
    assert errors == []
    worst = max(max(took) for took in latencies.values())
    p99 = statistics.quantiles(latencies["hung"], n=100)[98]
    print(f"\nhung phase: {len(latencies['hung'])} reads, p99 {p99:.2f} s, "
          f"slowest read {worst:.2f} s")  # fmt: skip
    # Never the hang's length: a statement waits the read bound, a read that
    # was connecting to the host libpq's connect_timeout.
    assert worst < CONNECT_TIMEOUT + 1.0
    assert p99 < READ_TIMEOUT + 0.5


def test_a_later_statement_on_a_hung_replica_raises_a_typed_error(
    hung: PostgresCluster,
    make_router: RouterMaker,
) -> None:
    cluster = hung
    router = make_router.sync(
        cluster.writer_url, cluster.replica_urls[:1], replica_read_timeout=READ_TIMEOUT
    )
    Session = routing_sync_sessionmaker(router)
    try:
        with Session() as session, read_only:
            assert session.execute(WHERE).one()[1]
            cluster.hang_replica(0)
            started = time.monotonic()
            with pytest.raises(ReplicaReadTimeout) as caught:
                session.execute(WHERE).one()
            assert time.monotonic() - started < READ_TIMEOUT + 0.5
            assert caught.value.connection_invalidated
            assert is_transient_error(caught.value)  # unit_of_work reruns it
        assert router.status()[1]["ejected"]
    finally:
        cluster.resume_replica(0)


def test_a_statement_past_the_bound_is_stopped_on_the_server(
    hung: PostgresCluster,
    make_router: RouterMaker,
) -> None:
    cluster = hung
    replica = cluster.replicas[0]
    router = make_router.sync(
        cluster.writer_url, cluster.replica_urls[:1], replica_read_timeout=READ_TIMEOUT
    )
    Session = routing_sync_sessionmaker(router)

    sleeping = pg_sleeping(cluster, replica)

    with Session() as session, read_only:
        assert session.execute(WHERE).one()[1]  # pinned: the next is later
        with pytest.raises(ReplicaReadTimeout):
            session.execute(text("SELECT pg_sleep(30)"))
    deadline = time.monotonic() + 5
    while sleeping():  # the server was asked to stop it
        assert time.monotonic() < deadline, "still running on the server"
        time.sleep(0.05)


def cluster_router(cluster: PostgresCluster, **options: Any) -> SyncRouter:
    """``SyncRouter.from_cluster`` over the nodes: primary, r0, r1."""
    return SyncRouter.from_cluster(
        cluster.urls,
        names=["primary", "r0", "r1"],
        monitor_interval=0.2,
        connect_timeout=CONNECT_TIMEOUT,
        **options,
    )


def test_writes_in_flight_on_a_hung_primary_move_to_the_promoted_one(
    hung: PostgresCluster,
) -> None:
    """The primary hangs, a standby is promoted: ``from_cluster`` cuts the
    threads' writes in flight on the hung host (libpq would wait for it)."""
    cluster = hung
    router = cluster_router(
        cluster,
        writer_wait_timeout=30,
        retry=RetryPolicy(attempts=1000, max_seconds=60, wait=tenacity.wait_none()),
    )
    Session = routing_sync_sessionmaker(router)
    began: dict[str, float] = {}  # acknowledged: when each began
    acks: list[float] = []
    errors: list[BaseException] = []
    stop = threading.Event()
    prefix = f"hung-primary-{cluster.driver}"

    def write(thread: int) -> None:
        @unit_of_work(Session)
        def add(session: orm.Session, name: str) -> None:
            session.add(Item(name=name))

        count = 0
        while not stop.is_set():
            name, count = f"{prefix}-{thread}-{count}", count + 1
            start = time.monotonic()
            try:
                add(name)
            except CommitOutcomeUnknown:  # a COMMIT in flight when cut
                continue
            except Exception as exc:  # counted: the test wants none
                errors.append(exc)
                time.sleep(0.05)
                continue
            began[name] = start
            acks.append(time.monotonic())

    def acked_since(moment: float) -> int:
        return sum(1 for at in list(acks) if at > moment)

    with router:
        writers = [threading.Thread(target=write, args=(n,)) for n in range(5)]
        for thread in writers:
            thread.start()
        try:
            until_sync(lambda: len(acks) >= 20, 10)
            cluster.hang_primary()
            hung_at = time.monotonic()
            cluster.promote(0)
            promoted = time.monotonic()
            until_sync(lambda: acked_since(promoted) >= 50, WRITES_RESUME)
            stop.set()
            for thread in writers:
                thread.join(WRITES_RESUME)
            assert not any(t.is_alive() for t in writers), "a writer waits"
        finally:
            stop.set()
            cluster.resume_primary()
            cluster.crash_primary()  # it is fenced: a failover's end
            for thread in writers:
                thread.join()
        writer_node = router.status()[0]["node"]
    assert errors == []
    assert writer_node == "r0"
    names = cluster.sql(
        cluster.replicas[0],
        f"SELECT string_agg(name, ',') FROM items WHERE name LIKE '{prefix}-%'",
    )
    assert begun_after(began, hung_at) <= set(names.split(","))


def test_checks_of_a_hung_node_leave_no_thread_waiting_on_it(
    hung: PostgresCluster,
) -> None:
    """A role check past its bound has its connection cut: its thread does not
    wait on the hung host (libpq would, for ever)."""
    cluster = hung
    router = cluster_router(cluster)
    bound = router.health.check_timeout

    def role_checks_waiting() -> int:
        return sum(t.name.startswith(ROLE_CHECK) for t in threading.enumerate())

    try:
        router.poll()  # the writer found: every probe holds a connection
        cluster.hang_primary()
        for _ in range(3):
            started = time.monotonic()
            router.poll()
            # The role checks, then the replicas' checks: each bounded.
            assert time.monotonic() - started < 2 * bound + 1.0
        assert router.status()[0]["role"] == "unknown"
        # Connecting to the hung host is bounded by connect_timeout.
        until_sync(lambda: role_checks_waiting() == 0, CONNECT_TIMEOUT + 3.0)
    finally:
        cluster.resume_primary()
        router.dispose()
