"""1. Routing overhead on an ORM point select, against raw asyncpg, a plain
AsyncSession and advanced-alchemy's routing session (the closest peer);
5. the cost of checkout checks.

Each operation is one point select in a fresh session, as a request runs it.
Each pair of ``PAIRS`` is timed select by select in turn, alone in several
fresh processes (``interleave.py``).
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


@pytest.mark.benchmark(group="overhead")
@pytest.mark.parametrize("pair", list(PAIRS))
def test_pair(benchmark: Any, bench_cluster: PostgresCluster, pair: str) -> None:
    """Time the pair in fresh processes; the results go to extra_info."""
    runs: list[list[dict[str, float]]] = []
    benchmark.pedantic(
        lambda: runs.append(
            in_processes(bench_cluster, pair, processes=PROCESSES, selects=SELECTS)
        ),
        rounds=1,
    )
    per_process = runs[0]
    benchmark.extra_info.update(
        pair=PAIRS[pair],
        selects_per_process=SELECTS,
        per_process=per_process,
        median_us_per_select={
            name: statistics.median(run[name] for run in per_process)
            for name in PAIRS[pair]
        },
    )
