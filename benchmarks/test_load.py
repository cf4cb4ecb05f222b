"""2-4: pool starvation, replica capacity and skew, with the load harness.

Each starvation and skew benchmark is one timed load run; capacity is rounds
of runs (see there). Summaries go into ``extra_info`` (throughput, latency and
checkout-wait percentiles, timeouts), from which ``report.py`` writes
RESULTS.md.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

from routing_db import Router, read_only, routing_sessionmaker
from routing_db.loadtest import LoadSummary, Workload, run_load
from routing_db.testing import PostgresCluster

from .conftest import ROWS

DURATION = 3.0


def record(benchmark: Any, loop: asyncio.AbstractEventLoop, load: Any) -> Any:
    """Time one run of ``load()``; a LoadSummary result goes to extra_info."""
    result: list[Any] = []
    benchmark.pedantic(
        lambda: result.append(loop.run_until_complete(load())), rounds=1, iterations=1
    )
    if isinstance(result[0], LoadSummary):
        benchmark.extra_info["summary"] = result[0].model_dump(mode="json")
    return result[0]


@pytest.mark.benchmark(group="starvation")
@pytest.mark.parametrize("concurrency", [10, 50, 200])
@pytest.mark.parametrize("profile", ["point_read", "hold"])
def test_pool_starvation(
    benchmark: Any,
    loop: asyncio.AbstractEventLoop,
    bench_cluster: PostgresCluster,
    profile: str,
    concurrency: int,
) -> None:
    """Pool 5+0, pool_timeout 2 s: short sessions vs sessions held 50 ms."""

    async def load() -> LoadSummary:
        engine = create_async_engine(
            bench_cluster.writer_url, pool_size=5, max_overflow=0, pool_timeout=2
        )
        try:
            return await run_load(
                async_sessionmaker(engine),
                profile=profile,
                concurrency=concurrency,
                duration=DURATION,
                workload=Workload(rows=ROWS, hold_ms=50),
            )
        finally:
            await engine.dispose()

    summary = record(benchmark, loop, load)
    if profile == "point_read":
        assert summary.timeouts == 0


# Replica capacity: each configuration runs once per round, in a new random
# order each round, and ratios are taken within a round (drift on a shared
# machine hits all configurations of a round alike).
CAPACITY_ROUNDS = 5
CAPACITY_RUN_S = 2.0
# label -> (replicas, writer_read_weight): with weight 1 the writer takes an
# equal share of the reads; with 0 only replicas serve them.
CAPACITY_CONFIGS = {
    "writer only": (0, 0.0),
    "writer + 1 replica": (1, 0.0),
    "writer + 2 replicas": (2, 0.0),
    "writer + 2 replicas, writer reads too": (2, 1.0),
}
CAPACITY_IO_MS = 20


@pytest.mark.benchmark(group="capacity")
def test_replica_capacity(
    benchmark: Any, loop: asyncio.AbstractEventLoop, bench_cluster: PostgresCluster
) -> None:
    """IO-bound reads (20 ms on the server), pool 5 per engine, 40 workers.

    20 ms: with shorter reads one Python client needs most of a core for
    three servers' pools, and shares it with them (``client_cpu`` shows it).
    """
    workload = Workload(rows=ROWS, io_ms=CAPACITY_IO_MS)
    rng = random.Random(CAPACITY_IO_MS)

    async def load() -> list[dict[str, Any]]:
        routers = {
            label: Router.from_urls(
                bench_cluster.writer_url,
                bench_cluster.replica_urls[:replicas],
                pool_size=5,
                max_overflow=0,
                writer_read_weight=weight,
            )
            for label, (replicas, weight) in CAPACITY_CONFIGS.items()
        }
        makers = {key: routing_sessionmaker(r) for key, r in routers.items()}
        try:
            for maker in makers.values():  # open every pool before measuring
                await run_load(
                    maker,
                    profile="io_read",
                    concurrency=40,
                    operations=200,
                    workload=workload,
                )
            rounds = []
            for _ in range(CAPACITY_ROUNDS):
                order = list(makers)
                rng.shuffle(order)
                runs = {}
                for key in order:
                    summary = await run_load(
                        makers[key],
                        profile="io_read",
                        concurrency=40,
                        duration=CAPACITY_RUN_S,
                        workload=workload,
                    )
                    runs[key] = summary.model_dump(mode="json")
                rounds.append(runs)
            return rounds
        finally:
            for router in routers.values():
                await router.dispose()

    benchmark.extra_info.update(
        rounds=record(benchmark, loop, load),
        io_ms=CAPACITY_IO_MS,
        run_seconds=CAPACITY_RUN_S,
        configs=list(CAPACITY_CONFIGS),
        baseline="writer only",
        replicas_only="writer + 2 replicas",
        shared="writer + 2 replicas, writer reads too",
    )


@pytest.mark.benchmark(group="skew")
@pytest.mark.parametrize("policy", ["round_robin", "least_busy"])
def test_slow_replica_skew(
    benchmark: Any,
    loop: asyncio.AbstractEventLoop,
    bench_cluster: PostgresCluster,
    policy: str,
) -> None:
    """Replica 0 answers in 50 ms, replica 1 in 5 ms (per-engine setting).

    4 workers: enough to keep both replicas busy under round_robin, few
    enough that one Python client is not the bottleneck (``client_cpu``),
    which would put its own queueing into the p99 being compared.
    """

    async def load() -> LoadSummary:
        writer = bench_cluster.writer_url
        slow, fast = bench_cluster.replica_urls
        engines = [
            create_async_engine(
                url,
                pool_size=5,
                max_overflow=0,
                connect_args={"server_settings": {"routing_bench.io_s": delay}},
            )
            for url, delay in ((slow, "0.050"), (fast, "0.005"))
        ]
        router = Router(
            writer=create_async_engine(writer, pool_size=5, max_overflow=0),
            replicas=engines,
            policy=policy,
        )
        try:
            return await run_load(
                routing_sessionmaker(router),
                profile=_per_engine_io_read,
                concurrency=4,
                duration=DURATION,
                workload=Workload(rows=ROWS),
            )
        finally:
            await router.dispose()

    record(benchmark, loop, load)


async def _per_engine_io_read(factory: Any, workload: Workload) -> None:
    async with factory() as session, read_only:
        await session.execute(
            text(
                "SELECT id, pg_sleep(current_setting('routing_bench.io_s')::float)"
                " FROM routing_db_bench WHERE id = :id"
            ),
            {"id": workload.row_id()},
        )
