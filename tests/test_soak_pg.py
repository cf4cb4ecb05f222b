"""The seeded chaos soak (``tests/soak.py``) and its invariants.

``ROUTING_DB_SOAK_SECONDS`` (default 40) and ``ROUTING_DB_SOAK_SEED`` (default:
drawn, and printed) set a run; ``make soak SECONDS=600 SEED=...`` runs it long.
"""

from __future__ import annotations

import os
import random

import pytest

from routing_db.testing import PostgresCluster

from . import soak

pytestmark = [pytest.mark.faults, pytest.mark.slow, pytest.mark.usefixtures("clean")]

SECONDS = float(os.environ.get("ROUTING_DB_SOAK_SECONDS", "40"))


def seed() -> int:
    given = os.environ.get("ROUTING_DB_SOAK_SEED")
    return int(given) if given else random.SystemRandom().randrange(10**6)


async def test_replica_faults_under_load(faults: PostgresCluster) -> None:
    summary = await soak.run(faults, seconds=SECONDS, seed=seed())
    print(f"\n{summary}")
    assert summary.stale_reads == 0, summary
    assert not summary.read_errors, summary  # the writer was up all along
    assert not summary.write_errors, summary
    assert summary.hangs == 0, summary
    assert summary.missing == [] and summary.duplicated == [], summary
    assert summary.writes_acknowledged > 0 and summary.reads > 0, summary
    assert sum(summary.faults.values()) > 0, summary
    assert summary.recovered_after[0] < 10, summary


async def test_the_soak_sees_stale_reads_without_the_causal_check(
    faults: PostgresCluster,
) -> None:
    """The control: a new request without the token reads a paused replica."""
    for index in range(len(faults.replicas)):
        await faults.apause_replay(index)
    # No other fault: a standby whose replay is paused would not restart its
    # WAL receiver for stop_streaming, and the pause is what this shows.
    summary = await soak.run(
        faults, seconds=3, seed=seed(), clients=8, causal=False, inject_faults=False
    )
    print(f"\n{summary}")
    assert summary.stale_reads > 0, summary


async def test_primary_restarts_under_write_load(faults: PostgresCluster) -> None:
    restarts = max(2, int(SECONDS // 20))
    summary, errors = await soak.run_primary_restarts(
        faults, restarts=restarts, seed=seed()
    )
    print(f"\n{summary}")
    assert summary.duplicated == [] and summary.missing == [], summary
    assert summary.hangs == 0, summary
    unexpected = [e for e in errors if not soak.allowed_write_error(e)]
    assert unexpected == [], unexpected[:3]
    assert len(summary.recovered_after) == restarts, summary
    assert all(seconds < 10 for seconds in summary.recovered_after), summary
    assert summary.writes_acknowledged > 0, summary
