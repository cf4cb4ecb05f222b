"""``SyncRouter.from_cluster`` with Patroni (threads, psycopg2): a hung
leader is fenced before another member is promoted."""

from __future__ import annotations

import threading
import time

from routing_db import SyncRouter, read_only, routing_sync_sessionmaker
from routing_db.testing import PatroniCluster

from .load import COUNT, FIND, INSERT, allowed, keys_on


def test_a_hung_leader_loses_no_acknowledged_write(patroni: PatroniCluster) -> None:
    patroni = patroni.with_driver("psycopg2")
    router = SyncRouter.from_cluster(
        patroni.urls,
        names=[member.name for member in patroni.members],
        patroni=patroni.rest_urls,
        writer_wait_timeout=30.0,
        pool_size=6,
    )
    Session = routing_sync_sessionmaker(router)
    stop = threading.Event()
    acked: list[str] = []
    errors: list[BaseException] = []
    read_errors: list[BaseException] = []
    stale: list[str] = []

    def writer(task: int) -> None:
        n = 0
        while not stop.is_set():
            key = f"s{task}-{n}"
            n += 1
            try:
                with Session() as session:
                    session.execute(INSERT, {"key": key})
                    session.commit()
            except Exception as exc:  # judged below
                errors.append(exc)
                time.sleep(0.05)
                continue
            acked.append(key)
            try:
                with Session() as session, read_only:
                    if session.scalar(FIND, {"key": key}) != 1:
                        stale.append(key)
            except Exception as exc:  # the test wants none
                read_errors.append(exc)

    def reader() -> None:
        while not stop.is_set():
            try:
                with Session() as session, read_only:
                    session.scalar(COUNT)
            except Exception as exc:  # the test wants none
                read_errors.append(exc)
            time.sleep(0.005)

    old = patroni.leader()
    assert old is not None
    with router:
        threads = [threading.Thread(target=writer, args=(i,)) for i in range(3)]
        threads += [threading.Thread(target=reader) for _ in range(2)]
        for thread in threads:
            thread.start()
        try:
            time.sleep(1.0)  # the load runs before the fault
            patroni.hang(old)
            deadline = time.monotonic() + 90
            while (leader := patroni.leader()) in (None, old):
                assert time.monotonic() < deadline, "no new leader"
                time.sleep(0.05)
            reported = time.monotonic()
            count = len(acked)
            while len(acked) == count:
                assert time.monotonic() < reported + 5, "writes did not resume"
                time.sleep(0.01)
            resumed = time.monotonic() - reported
        finally:
            stop.set()
            for thread in threads:
                thread.join(60)
    patroni.heal()
    present = set(keys_on(patroni))
    lost = [key for key in acked if key not in present]
    assert not lost, lost[:10]
    assert not read_errors, read_errors[:3]
    assert not stale, stale[:10]
    assert all(allowed(error) for error in errors), errors[:3]
    assert resumed <= 1.0, f"writes resumed {resumed:.2f} s after the report"
    assert patroni.sql(leader, "SELECT count(*) FROM pat_items") == str(len(present))
