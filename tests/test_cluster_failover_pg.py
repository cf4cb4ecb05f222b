"""The test cluster's failover controls: promote, follow, rebuild, add, heal."""

from __future__ import annotations

import pytest

from routing_db.testing import PostgresCluster
from routing_db.testing._cluster import in_recovery, streams_from

pytestmark = pytest.mark.slow  # a failover and its healing take seconds


def test_a_failover_and_back(asyncpg_faults: PostgresCluster) -> None:
    cluster = asyncpg_faults
    old, (new, other) = cluster.primary, cluster.replicas
    cluster.sql(old, "CREATE TABLE IF NOT EXISTS failover_marks (n int)")
    cluster.sql(old, "TRUNCATE failover_marks")
    cluster.wait_replicated()

    cluster.crash_primary()
    cluster.promote(0)
    assert cluster.current_primary is new
    cluster.sql(new, "INSERT INTO failover_marks VALUES (1)")
    cluster.follow(1, new_primary=0)
    assert streams_from(cluster, new, other)
    cluster.wait_replicated([other])
    assert cluster.sql(other, "SELECT count(*) FROM failover_marks") == "1"

    cluster.rebuild_as_standby(old, of=0)
    assert in_recovery(cluster, old)
    assert streams_from(cluster, new, old)
    added = cluster.add_standby()
    assert streams_from(cluster, new, added)
    cluster.sql(new, "INSERT INTO failover_marks VALUES (2)")
    cluster.wait_replicated([old, other, added])
    assert cluster.sql(added, "SELECT sum(n) FROM failover_marks") == "3"

    cluster.heal()
    # The original shape, with the writes made during the failover kept.
    assert cluster.current_primary is old
    assert cluster.replicas == [new, other]
    assert all(streams_from(cluster, old, node) for node in cluster.replicas)
    assert cluster.sql(old, "SELECT sum(n) FROM failover_marks") == "3"
    assert not cluster.is_running(added)


def test_heal_ends_a_split_brain(asyncpg_faults: PostgresCluster) -> None:
    cluster = asyncpg_faults
    cluster.promote(1)  # while the primary still runs: two nodes take writes
    assert not in_recovery(cluster, cluster.replicas[1])
    assert not in_recovery(cluster, cluster.primary)
    cluster.heal()
    assert in_recovery(cluster, cluster.replicas[1])
    assert streams_from(cluster, cluster.primary, cluster.replicas[1])
