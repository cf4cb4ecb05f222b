"""6. Failover: how long writes are unavailable after a standby is promoted.

Each round crashes the primary, or hangs it (SIGSTOP: a host behind a
partition), under a steady write load through a ``from_cluster`` router,
promotes replica 0 (as a failover manager would) and times the first write
acknowledged after ``promote`` returned; then the cluster is healed for the
next round.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Any

import pytest
from sqlalchemy import text

from routing_db import Router, routing_sessionmaker
from routing_db.testing import PostgresCluster

from .conftest import measure
from .report import add_section, spread, table

ROUNDS = 5
MONITOR_INTERVAL = 0.2
WRITERS = 5
INSERT = text("INSERT INTO routing_db_failover (k) VALUES (:k)")


async def one_failover(cluster: PostgresCluster, fault: str) -> dict[str, float]:
    """Seconds from the fault and from ``promote`` to the first write after it."""
    router = Router.from_cluster(cluster.urls, monitor_interval=MONITOR_INTERVAL)
    Session = routing_sessionmaker(router)
    acked: list[float] = []
    promoted = float("inf")
    steady, resumed = asyncio.Event(), asyncio.Event()
    running = True

    async def write(task: int) -> None:
        for n in itertools.count():
            if not running:
                return
            try:
                async with Session() as session:
                    await session.execute(INSERT, {"k": f"{task}-{n}-{time.time()}"})
                    await session.commit()
            except Exception:  # the crash instant, or NoWriterAvailable
                await asyncio.sleep(0.01)
                continue
            acked.append(time.monotonic())
            if len(acked) >= 50:
                steady.set()
            if acked[-1] > promoted:
                resumed.set()

    async with router:
        writers = [asyncio.create_task(write(i)) for i in range(WRITERS)]
        try:
            await steady.wait()
            crashed = time.monotonic()
            await (
                cluster.ahang_primary if fault == "hang" else cluster.acrash_primary
            )()
            await cluster.apromote(0)
            promoted = time.monotonic()
            async with asyncio.timeout(60):
                await resumed.wait()
            first = min(t for t in acked if t > promoted)
        finally:
            running = False
            if fault == "hang":  # fenced, as a failover manager would
                await cluster.aresume_primary()
                await cluster.acrash_primary()
            await asyncio.gather(*writers)
    await cluster.aheal()
    return {"after_promote": first - promoted, "since_crash": first - crashed}


def test_failover_window(benchmark: Any, bench_cluster: PostgresCluster) -> None:
    if not bench_cluster.owned:
        pytest.skip("a failover needs a cluster started by this run")
    bench_cluster.sql(
        bench_cluster.primary,
        "CREATE TABLE IF NOT EXISTS routing_db_failover (k text PRIMARY KEY)",
    )

    async def rounds(fault: str) -> list[dict[str, float]]:
        return [await one_failover(bench_cluster, fault) for _ in range(ROUNDS)]

    faults = {"crashed": "crash", "hung": "hang"}
    runs = measure(
        benchmark, lambda: {k: asyncio.run(rounds(f)) for k, f in faults.items()}
    )

    def seconds(fault: str, key: str) -> str:
        return spread([r[key] for r in runs[fault]], "failovers", 2, " s")

    add_section(
        benchmark,
        "6. Failover: writes unavailable after a promotion",
        [
            f"{ROUNDS} failovers each: the primary crashes, or hangs (SIGSTOP: a "
            f"host behind a partition), under {WRITERS} writer tasks through "
            f"`Router.from_cluster` (`monitor_interval={MONITOR_INTERVAL:g}`), and "
            "replica 0 is promoted at once.",
            "",
            *table(
                [
                    "primary",
                    "first write after `promote` returned",
                    "writes unavailable since the fault (promotion included)",
                ],
                (
                    (f, seconds(f, "after_promote"), seconds(f, "since_crash"))
                    for f in runs
                ),
            ),
        ],
    )
