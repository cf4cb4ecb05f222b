"""A primary that hangs (every process stopped, its sockets open: a host behind
a partition) while a failover manager promotes a standby.

Nothing closes, so no driver notices: the writes in flight on the hung host
would wait for it until it answers again, or for the kernel's TCP timeout.
Once ``from_cluster`` finds the promoted node, it cuts them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

import pytest
import tenacity
from sqlalchemy.ext.asyncio import AsyncSession

from routing_db import (
    CommitOutcomeUnknown,
    RetryPolicy,
    Router,
    routing_sessionmaker,
)
from routing_db import run_unit_of_work as run
from routing_db.testing import PostgresCluster

from .models import Item
from .waiting import until

pytestmark = pytest.mark.slow  # seconds of a hung host, on the real clock

WRITERS = 5
# The new primary is found within two monitor rounds; a round waits at most
# the check bound (2 s) for the hung node, once for its role and once for
# its reader's health.
WRITES_RESUME = 2 * 2 * 2.0 + 2.0  # with room for a loaded 2-core machine


# Enough attempts that a write rerun while the promoted node is being found
# still ends; no backoff.
RETRY = RetryPolicy(attempts=1000, max_seconds=60, wait=tenacity.wait_none())


class Cluster(Protocol):
    """What the PostgreSQL and MariaDB test clusters both offer here."""

    def ahang_primary(self) -> Awaitable[None]: ...
    def aresume_primary(self) -> Awaitable[None]: ...
    def acrash_primary(self) -> Awaitable[None]: ...
    def apromote(self, node: int) -> Awaitable[None]: ...


async def writes_across_a_hung_primary(
    cluster: Cluster,
    router: Router,
    write: Callable[[AsyncSession, str], Awaitable[None]],
) -> tuple[dict[str, float], float]:
    """Five tasks run ``write(session, key)`` as units of work while the
    primary hangs and replica 0 is promoted; return the keys acknowledged,
    each with when its unit of work began, and when the primary hung. Writes
    must resume on the new primary while the old one still hangs, and no
    writer may wait for it; afterwards the old primary is crashed (fenced, as
    at a failover's end)."""
    Session = routing_sessionmaker(router)
    began: dict[str, float] = {}
    acks: list[float] = []
    errors: list[BaseException] = []
    stop = asyncio.Event()

    async def writer(task: int) -> None:
        count = 0
        while not stop.is_set():
            key, count, start = f"{task}-{count}", count + 1, time.monotonic()
            try:
                await run(Session, write, key)
            except CommitOutcomeUnknown:  # a COMMIT in flight when cut
                continue
            except Exception as exc:  # counted: the test wants none
                errors.append(exc)
                await asyncio.sleep(0.05)
                continue
            began[key] = start
            acks.append(time.monotonic())

    def acked_since(moment: float) -> int:
        return sum(1 for at in acks if at > moment)

    async with router:
        writers = [asyncio.create_task(writer(task)) for task in range(WRITERS)]
        try:
            await until(lambda: len(acks) >= 20, 10)
            await cluster.ahang_primary()
            hung = time.monotonic()
            await cluster.apromote(0)
            promoted = time.monotonic()
            # The old primary still hangs: every writer is back at work.
            await until(lambda: acked_since(promoted) >= 50, WRITES_RESUME)
            stop.set()
            _, stuck = await asyncio.wait(writers, timeout=WRITES_RESUME)
            assert not stuck, "writers still wait for the hung primary"
        finally:
            stop.set()
            await cluster.aresume_primary()
            await cluster.acrash_primary()
            await asyncio.gather(*writers, return_exceptions=True)
    assert errors == []
    return began, hung


def begun_after(began: dict[str, float], moment: float) -> set[str]:
    """Keys whose write began after ``moment``. Begun once the primary hung or
    crashed, a write cannot have committed there: it must be on the promoted
    node (what the old one committed last may never reach it: replication is
    asynchronous). When a write was acknowledged says nothing of where it
    committed: a task resumes from a COMMIT whenever the loop gets to it."""
    return {key for key, start in began.items() if start > moment}


async def add(session: AsyncSession, name: str) -> None:
    session.add(Item(name=name))


@pytest.mark.usefixtures("clean")
async def test_writes_in_flight_on_a_hung_primary_move_to_the_promoted_one(
    faults: PostgresCluster,
) -> None:
    cluster = faults
    router = Router.from_cluster(
        cluster.urls,
        names=["primary", "r0", "r1"],
        monitor_interval=0.2,
        connect_timeout=2.0,
        writer_wait_timeout=30,
        retry=RETRY,
    )
    began, hung = await writes_across_a_hung_primary(cluster, router, add)
    assert router.status()[0]["node"] == "r0"
    names = cluster.sql(cluster.replicas[0], "SELECT string_agg(name, ',') FROM items")
    assert begun_after(began, hung) <= set(names.split(","))
