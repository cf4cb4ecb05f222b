"""1. Routing overhead on an ORM point select, against raw asyncpg, a plain
AsyncSession and advanced-alchemy's routing session (the closest peer);
5. the cost of checkout checks.

Each pair of ``PAIRS`` is timed select by select in turn, alone in several
fresh processes (``variants.py``); ratios are taken within each process.
"""

from __future__ import annotations

import statistics
from typing import Any

from routing_db.testing import PostgresCluster

from . import goals
from .conftest import measure
from .report import add_section, spread, table, verdict
from .variants import CHECKOUT, OVERHEAD, PAIRS, in_processes, label

# Selects per variant in each process, and how many processes.
SELECTS = 1500
PROCESSES = 5


def test_overhead(benchmark: Any, bench_cluster: PostgresCluster) -> None:
    runs = measure(
        benchmark,
        lambda: {
            name: in_processes(
                bench_cluster, name, processes=PROCESSES, selects=SELECTS
            )
            for name in PAIRS
        },
    )
    benchmark.extra_info["per_process"] = runs
    ratios = {
        name: [run[PAIRS[name][0]] / run[PAIRS[name][1]] for run in per_process]
        for name, per_process in runs.items()
    }
    # How far apart identical code measured in this run.
    resolution = max(abs(r - 1) for r in ratios["control_a_a"])

    def rows(pairs: dict[str, tuple[str, str]]) -> list[str]:
        cells = []
        for name, pair in pairs.items():
            if name not in runs:
                continue
            goal, over = goals.LIMITS.get(name), max(goals.MARGIN, resolution)
            met = goal and statistics.median(ratios[name]) <= goal + over
            micros = [statistics.median(run[v] for run in runs[name]) for v in pair]
            cells.append(
                (
                    label(pair),
                    *(f"{us:.0f}" for us in micros),
                    spread(ratios[name], "processes"),
                    f"≤ {goal:.2f}x: {verdict(bool(met))}" if goal else "",
                )
            )
        return table(["a / b", "µs a", "µs b", "a / b: median", "goal"], cells)

    add_section(
        benchmark,
        "1. Routing overhead: ORM point select, fresh session each",
        [
            f"Each row is one pair timed head to head: a and b alone, select by "
            f"select in turn, in {PROCESSES} fresh processes; the ratio is taken "
            "within each process, then the median over processes (range in "
            "brackets). The read_only rows and the A/A control run with "
            "`replica_read_timeout` off, like the plain session and the peer; the "
            "last row is what the bound, on by default, adds.",
            "",
            *rows(OVERHEAD),
            "",
            f"The A/A control measured identical code up to {resolution:.1%} apart. "
            "A median counts as over its goal only when it is over by more than "
            f"{goals.MARGIN:.0%} or than that spread, whichever is wider."
            + ("" if "writer_vs_peer" in runs else " The peer needs SQLAlchemy 2.0."),
        ],
    )
    add_section(
        benchmark,
        "5. Checkout cost: ORM point select through the router's writer",
        rows(CHECKOUT),
    )
