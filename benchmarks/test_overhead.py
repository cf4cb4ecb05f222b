"""1. Routing overhead on an ORM point select, against raw asyncpg, a plain
AsyncSession and advanced-alchemy's RoutingAsyncSession (the closest peer);
5. the cost of checkout checks.

One round = 200 point selects, each in a fresh session, as a request would.
Each variant is a pytest-benchmark test of its own; the ratios in RESULTS.md
come from the ``interleaved`` benchmarks (see ``interleave.py``): variants
timed select by select in turn, in several fresh processes; every variant
together for the table, and each pair a goal compares alone (``PAIRS``).
``test_overhead_work`` counts the Python work per select (``work.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import statistics
from typing import Any

import pytest

from routing_db.testing import PostgresCluster

from .interleave import in_processes
from .variants import CHECKOUT, OVERHEAD, PAIRS, PER_ROUND, Op, Variant, one_round
from .work import bytecodes_per_select

ROUNDS = 15
# Interleaved: selects per variant in each process, and how many processes.
SELECTS = 1500
PROCESSES = 5
# Counted, not timed: the mean over this many selects varies by a few
# instructions (how often the event loop polls before a reply has come).
COUNTED_SELECTS = 200


def bench_one(
    benchmark: Any,
    loop: asyncio.AbstractEventLoop,
    cluster: PostgresCluster,
    variant: Variant,
) -> None:
    async def opened() -> tuple[contextlib.AsyncExitStack, Op]:
        stack = contextlib.AsyncExitStack()
        op = await stack.enter_async_context(variant(cluster))
        await one_round(op, rng)  # warm up pools and caches
        return stack, op

    rng = random.Random(7)
    stack, op = loop.run_until_complete(opened())
    benchmark.extra_info["per_round"] = PER_ROUND
    try:
        benchmark.pedantic(
            lambda: loop.run_until_complete(one_round(op, rng)),
            rounds=ROUNDS,
            warmup_rounds=1,
        )
    finally:
        loop.run_until_complete(stack.aclose())


def bench_interleaved(benchmark: Any, cluster: PostgresCluster, group: str) -> None:
    runs: list[list[dict[str, float]]] = []
    benchmark.pedantic(
        lambda: runs.append(
            in_processes(cluster, group, processes=PROCESSES, selects=SELECTS)
        ),
        rounds=1,
    )
    per_process = runs[0]
    names = {name for run in per_process for name in run}
    benchmark.extra_info["selects_per_process"] = SELECTS
    benchmark.extra_info["per_process"] = per_process
    benchmark.extra_info["median_us_per_select"] = {
        name: statistics.median(run[name] for run in per_process if name in run)
        for name in names
    }


@pytest.mark.benchmark(group="overhead")
@pytest.mark.parametrize("variant", list(OVERHEAD))
def test_overhead(
    benchmark: Any,
    loop: asyncio.AbstractEventLoop,
    bench_cluster: PostgresCluster,
    variant: str,
) -> None:
    bench_one(benchmark, loop, bench_cluster, OVERHEAD[variant])


@pytest.mark.benchmark(group="overhead-interleaved")
def test_overhead_interleaved(benchmark: Any, bench_cluster: PostgresCluster) -> None:
    bench_interleaved(benchmark, bench_cluster, "overhead")


@pytest.mark.benchmark(group="overhead-pairs")
@pytest.mark.parametrize("pair", list(PAIRS))
def test_overhead_pair(
    benchmark: Any, bench_cluster: PostgresCluster, pair: str
) -> None:
    bench_interleaved(benchmark, bench_cluster, f"pair_{pair}")


@pytest.mark.benchmark(group="overhead-work")
def test_overhead_work(
    benchmark: Any, loop: asyncio.AbstractEventLoop, bench_cluster: PostgresCluster
) -> None:
    counts: dict[str, float] = {}
    benchmark.pedantic(
        lambda: counts.update(
            loop.run_until_complete(
                bytecodes_per_select(bench_cluster, OVERHEAD, COUNTED_SELECTS)
            )
        ),
        rounds=1,
    )
    assert counts["routing_session_writer"] > counts["plain_async_session"] > 0
    benchmark.extra_info["selects"] = COUNTED_SELECTS
    benchmark.extra_info["bytecodes_per_select"] = counts


@pytest.mark.benchmark(group="checkout")
@pytest.mark.parametrize("variant", list(CHECKOUT))
def test_checkout_cost(
    benchmark: Any,
    loop: asyncio.AbstractEventLoop,
    bench_cluster: PostgresCluster,
    variant: str,
) -> None:
    bench_one(benchmark, loop, bench_cluster, CHECKOUT[variant])


@pytest.mark.benchmark(group="checkout-interleaved")
def test_checkout_interleaved(benchmark: Any, bench_cluster: PostgresCluster) -> None:
    bench_interleaved(benchmark, bench_cluster, "checkout")
