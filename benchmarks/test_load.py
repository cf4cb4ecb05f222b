"""2-4: pool starvation, replica capacity and skew, with the load harness.

Each run is ``run_load`` for a fixed time, measured at the pools (throughput,
latency and checkout-wait percentiles, timeouts, who served the operations).
"""

from __future__ import annotations

import asyncio
import random
import statistics
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

from routing_db import Router, read_only, routing_sessionmaker
from routing_db.loadtest import LoadSummary, Workload, plot_summaries, run_load
from routing_db.testing import PostgresCluster

from . import goals
from .conftest import ROWS, measure
from .report import HERE, add_section, load_table, spread, verdict

DURATION = 3.0


def test_pool_starvation(benchmark: Any, bench_cluster: PostgresCluster) -> None:
    """Pool 5+0, pool_timeout 2 s: short sessions vs sessions held 50 ms."""

    async def load(profile: str, concurrency: int) -> LoadSummary:
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

    runs = measure(
        benchmark,
        lambda: [
            (label, asyncio.run(load(profile, concurrency)))
            for label, profile in (
                ("held 50 ms", "hold"),
                ("short sessions", "point_read"),
            )
            for concurrency in (10, 50, 200)
        ],
    )
    assert all(s.timeouts == 0 for label, s in runs if label == "short sessions")
    plot_summaries(runs, str(HERE / "starvation.png"))
    add_section(
        benchmark,
        "2. Pool starvation: pool 5+0, pool_timeout 2 s, plain AsyncSession",
        [
            "![throughput, p99 latency and checkout wait against workers]"
            "(starvation.png)",
            "",
            *load_table(runs),
            "",
            "Sessions held across an await drain the pool: checkout waits grow to "
            "`pool_timeout` and requests fail, while short sessions serve the same "
            "workers with no timeout.",
        ],
    )


# label -> (replicas, writer_read_weight): with weight 1 the writer takes an
# equal share of the reads; with 0 only replicas serve them.
CAPACITY_CONFIGS = {
    "writer only": (0, 0.0),
    "writer + 1 replica": (1, 0.0),
    "writer + 2 replicas": (2, 0.0),
    "writer + 2 replicas, writer reads too": (2, 1.0),
}
ROUNDS, RUN_S, IO_MS = 5, 2.0, 20


def test_replica_capacity(benchmark: Any, bench_cluster: PostgresCluster) -> None:
    """IO-bound reads, pool 5 per engine, 40 workers, in rounds.

    Each configuration runs once per round, in a new random order each round,
    and ratios are taken within a round: drift on a shared machine hits a
    round's configurations alike. Reads take 20 ms on the server: with shorter
    ones one Python client needs most of a core for three servers' pools, and
    shares it with them (``client_cpu`` shows it).
    """
    workload = Workload(rows=ROWS, io_ms=IO_MS)
    rng = random.Random(IO_MS)

    async def load() -> list[dict[str, LoadSummary]]:
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
        options: dict[str, Any] = {"profile": "io_read", "concurrency": 40}
        try:
            for maker in makers.values():  # open every pool before measuring
                await run_load(maker, operations=200, workload=workload, **options)
            rounds = []
            for _ in range(ROUNDS):
                order = rng.sample(list(makers), len(makers))
                rounds.append(
                    {
                        key: await run_load(
                            makers[key], duration=RUN_S, workload=workload, **options
                        )
                        for key in order
                    }
                )
            return rounds
        finally:
            for router in routers.values():
                await router.dispose()

    rounds = measure(benchmark, lambda: asyncio.run(load()))

    def median_round(label: str) -> LoadSummary:
        by_throughput = sorted((r[label] for r in rounds), key=lambda s: s.throughput)
        return by_throughput[(len(rounds) - 1) // 2]

    def times(label: str) -> list[float]:
        return [r[label].throughput / r["writer only"].throughput for r in rounds]

    shared = "writer + 2 replicas, writer reads too"
    met = statistics.median(times(shared)) >= goals.CAPACITY
    add_section(
        benchmark,
        "3. Replica capacity: IO-bound reads, pool 5 per engine, 40 workers",
        [
            f"{IO_MS} ms on the server per read. {ROUNDS} rounds; in each, every "
            f"configuration runs {RUN_S:g} s, in a new random order. A row is the "
            "configuration's median round; ratios are taken within each round. "
            "With `writer_read_weight=1` the writer takes an equal share of the "
            "reads (in READ ONLY transactions).",
            "",
            *load_table((label, median_round(label)) for label in CAPACITY_CONFIGS),
            "",
            "Throughput x writer only: writer + 2 replicas "
            f"{spread(times('writer + 2 replicas'), 'rounds', 2)}; {shared} "
            f"{spread(times(shared), 'rounds', 2)} — goal ≥ {goals.CAPACITY}x: "
            f"{verdict(met)} (the client used {median_round(shared).client_cpu:.2f} "
            "of a core).",
        ],
    )


def test_slow_replica_skew(benchmark: Any, bench_cluster: PostgresCluster) -> None:
    """Replica 0 answers in 50 ms, replica 1 in 5 ms (per-engine setting).

    4 workers: enough to keep both replicas busy under round_robin, few
    enough that one Python client is not the bottleneck (``client_cpu``),
    which would put its own queueing into the p99 being compared.
    """

    async def load(policy: str) -> LoadSummary:
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
            writer=create_async_engine(
                bench_cluster.writer_url, pool_size=5, max_overflow=0
            ),
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

    policies = ("least_busy", "round_robin")
    runs = measure(benchmark, lambda: [(p, asyncio.run(load(p))) for p in policies])
    (_, least_busy), (_, round_robin) = runs
    ratio = least_busy.latency_ms.p99 / round_robin.latency_ms.p99
    add_section(
        benchmark,
        "4. Skew: one replica answers in 50 ms, the other in 5 ms",
        [
            *load_table(runs),
            "",
            f"p99 least_busy / round_robin: {ratio:.2f}x — goal ≤ {goals.SKEW}x: "
            f"{verdict(ratio <= goals.SKEW)}.",
        ],
    )


async def _per_engine_io_read(factory: Any, workload: Workload) -> None:
    async with factory() as session, read_only:
        await session.execute(
            text(
                "SELECT id, pg_sleep(current_setting('routing_bench.io_s')::float)"
                " FROM routing_db_bench WHERE id = :id"
            ),
            {"id": workload.row_id()},
        )
