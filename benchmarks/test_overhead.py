"""1. Routing overhead on an ORM point select, against raw asyncpg, a plain
AsyncSession and advanced-alchemy's routing session (the closest peer);
5. the cost of checkout checks.

Each operation is one point select in a fresh session, as a request runs it.
The variants are timed select by select in turn, in several fresh processes
(``interleave.py``): every variant together for the table, and each pair a
goal compares alone (``PAIRS``).
"""

from __future__ import annotations

import statistics
from typing import Any

import pytest

from routing_db.testing import PostgresCluster

from .interleave import in_processes
from .variants import PAIRS

# Selects per variant in each process, and how many processes.
SELECTS = 1500
PROCESSES = 5


def bench_interleaved(benchmark: Any, cluster: PostgresCluster, group: str) -> None:
    """Time ``group``'s variants in fresh processes; the results go to extra_info."""
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
def test_overhead_interleaved(benchmark: Any, bench_cluster: PostgresCluster) -> None:
    bench_interleaved(benchmark, bench_cluster, "overhead")


@pytest.mark.benchmark(group="overhead-pairs")
@pytest.mark.parametrize("pair", list(PAIRS))
def test_overhead_pair(
    benchmark: Any, bench_cluster: PostgresCluster, pair: str
) -> None:
    bench_interleaved(benchmark, bench_cluster, f"pair_{pair}")
    benchmark.extra_info["pair"] = PAIRS[pair]


@pytest.mark.benchmark(group="checkout")
def test_checkout_interleaved(benchmark: Any, bench_cluster: PostgresCluster) -> None:
    bench_interleaved(benchmark, bench_cluster, "checkout")
