"""7. A hung replica: read latency while one of two replicas stops answering.

Reader tasks run point selects under ``read_only``; after a healthy phase
every process of replica 0 is stopped (SIGSTOP: sockets stay open, nothing
answers) for a while, then resumed. Reads are counted in the phase they
started in; ``replica_read_timeout`` bounds the reads caught on it.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import Any

import pytest
from sqlalchemy import select

from routing_db import Router, read_only, routing_sessionmaker
from routing_db.testing import PostgresCluster

from .conftest import BenchRow, measure
from .report import add_section, table

READERS = 20
HEALTHY, HUNG = 3.0, 5.0
READ_TIMEOUT = 1.0


async def hang_phases(cluster: PostgresCluster) -> dict[str, Any]:
    """Read latencies (seconds) by phase, and the reads each phase completed."""
    router = Router.from_urls(
        cluster.writer_url,
        cluster.replica_urls,
        monitor_interval=0.2,
        replica_read_timeout=READ_TIMEOUT,
        connect_timeout=2.0,
    )
    Session = routing_sessionmaker(router)
    took: dict[str, list[float]] = {"healthy": [], "hung": []}
    phase: list[str | None] = ["healthy"]
    query = select(BenchRow.counter).where(BenchRow.id == 1)

    async def read() -> None:
        while (started_in := phase[0]) is not None:
            started = time.monotonic()
            async with Session() as session, read_only:
                await session.scalar(query)
            took[started_in].append(time.monotonic() - started)

    async with router:
        readers = [asyncio.create_task(read()) for _ in range(READERS)]
        try:
            await asyncio.sleep(HEALTHY)  # phase lengths, not waits for state
            phase[0] = "hung"
            await cluster.ahang_replica(0)
            await asyncio.sleep(HUNG)
        finally:
            phase[0] = None
            await cluster.aresume_replica(0)
            await asyncio.gather(*readers)
    return {
        name: {
            "p99": statistics.quantiles(values, n=100)[98],
            "max": max(values),
            "reads_per_second": len(values) / (HEALTHY if name == "healthy" else HUNG),
        }
        for name, values in took.items()
    }


def test_hung_replica(benchmark: Any, bench_cluster: PostgresCluster) -> None:
    if not bench_cluster.owned:
        pytest.skip("hanging a replica needs a cluster started by this run")
    phases = measure(benchmark, lambda: asyncio.run(hang_phases(bench_cluster)))
    healthy, hung = phases["healthy"], phases["hung"]
    rate = hung["reads_per_second"] / healthy["reads_per_second"]
    add_section(
        benchmark,
        "7. A hung replica: read latency while it stops answering",
        [
            f"{READERS} reader tasks; replica 0 stopped (SIGSTOP) under them; "
            f"`replica_read_timeout={READ_TIMEOUT:g}`.",
            "",
            *table(
                ["phase", "read p99", "slowest read", "reads/s"],
                (
                    (
                        name,
                        f"{p['p99'] * 1000:.1f} ms",
                        f"{p['max'] * 1000:.0f} ms",
                        f"{p['reads_per_second']:.0f}",
                    )
                    for name, p in phases.items()
                ),
            ),
            "",
            f"p99 hung / healthy: {hung['p99'] / healthy['p99']:.1f}x; throughput "
            f"hung / healthy: {rate:.2f}.",
        ],
    )
