"""Ejection, backoff and lag hysteresis as pure bookkeeping (no database)."""

from __future__ import annotations

import pytest

from routing_db import ConfigurationError
from routing_db._backends.backend import ReplicaStatus
from routing_db._causal.floor import DOMAIN_SHIFT
from routing_db._monitor.rounds import lag_seconds_within
from routing_db._replicas.health import HealthOptions, ReplicaState


def test_one_failure_ejects_by_default_and_backoff_grows() -> None:
    state = ReplicaState(HealthOptions(probe_initial=1.0, probe_max=4.0))
    assert state.available(0.0)
    assert state.record_failure(10.0) is True
    assert not state.available(10.5)
    assert state.available(11.0)  # half-open: offered again for one probe
    assert state.record_failure(11.0) is False  # the probe failed
    assert not state.available(12.9)
    assert state.available(13.0)  # backoff doubled to 2 s
    state.record_failure(13.0)
    state.record_failure(17.0)
    assert state.probe_at == 21.0  # capped at probe_max
    assert state.record_success() is True
    assert state.available(17.1)
    assert state.ejections == 1


def test_n_failures_within_the_window_eject() -> None:
    state = ReplicaState(HealthOptions(eject_after=3, eject_window=10.0))
    assert not state.record_failure(0.0)
    assert not state.record_failure(5.0)
    assert not state.record_failure(10.5)  # the first has left the window
    assert state.record_failure(11.0)
    assert state.ejected


def test_success_clears_counted_failures() -> None:
    state = ReplicaState(HealthOptions(eject_after=2))
    state.record_failure(0.0)
    assert state.record_success() is False
    assert not state.record_failure(1.0)


def test_lag_limits_with_hysteresis() -> None:
    state = ReplicaState(HealthOptions(max_lag_bytes=1000, max_lag_seconds=10.0))
    state.record_lag(replay_lsn=5, lag_bytes=999, lag_seconds=1.0)
    assert not state.lagging
    state.record_lag(replay_lsn=6, lag_bytes=1001, lag_seconds=1.0)
    assert state.lagging and not state.available(0.0)
    state.record_lag(replay_lsn=7, lag_bytes=900, lag_seconds=1.0)
    assert state.lagging  # under the limit but not under half of it
    state.record_lag(replay_lsn=8, lag_bytes=500, lag_seconds=1.0)
    assert not state.lagging
    state.record_lag(replay_lsn=9, lag_bytes=0, lag_seconds=11.0)
    assert state.lagging  # seconds count too
    state.record_lag(replay_lsn=4, lag_bytes=0, lag_seconds=0.0)
    assert not state.lagging
    assert state.replay_lsn == 9  # positions never move back


def test_no_limits_never_lag() -> None:
    state = ReplicaState(HealthOptions(max_lag_bytes=None, max_lag_seconds=None))
    state.record_lag(replay_lsn=1, lag_bytes=10**12, lag_seconds=10**6)
    assert not state.lagging


def test_caught_up_compares_this_replicas_position() -> None:
    state = ReplicaState(HealthOptions())
    assert not state.caught_up(1)  # never measured: not known to be caught up
    state.raise_replay_lsn(100)
    assert state.caught_up(100) and not state.caught_up(101)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"eject_after": 0},
        {"eject_window": 0},
        {"probe_initial": -1},
        {"max_lag_bytes": -1},
        {"max_lag_seconds": -0.5},
    ],
)
def test_bad_options(kwargs: dict[str, float]) -> None:
    with pytest.raises(ConfigurationError):
        HealthOptions(**kwargs)  # type: ignore[arg-type]


def test_lag_limits_are_on_by_default() -> None:
    options = HealthOptions()
    assert (options.max_lag_bytes, options.max_lag_seconds) == (16 * 2**20, 60.0)
    state = ReplicaState(options)
    state.record_lag(replay_lsn=1, lag_bytes=16 * 2**20, lag_seconds=60.0)
    assert not state.lagging  # at the limit, not over it
    state.record_lag(replay_lsn=2, lag_bytes=16 * 2**20 + 1, lag_seconds=1.0)
    assert state.lagging


def test_behind_without_a_measure_counts_as_over_the_limits() -> None:
    # A replica that stopped streaming and cannot say how far behind it is
    # (MariaDB: Seconds_Behind_Master is NULL then).
    state = ReplicaState(HealthOptions())
    state.record_lag(replay_lsn=1, lag_bytes=None, lag_seconds=None, unbounded=True)
    assert state.lagging
    off = ReplicaState(HealthOptions(max_lag_bytes=None, max_lag_seconds=None))
    off.record_lag(replay_lsn=1, lag_bytes=None, lag_seconds=None, unbounded=True)
    assert not off.lagging


def _behind(position: int | None, seconds: float | None) -> ReplicaStatus:
    return ReplicaStatus(position, 24, seconds, True, True)


def test_a_replica_that_had_what_the_writer_had_lags_no_more_than_since() -> None:
    # The last replayed transaction is a minute old, but the replica had all
    # the writer had 0.2 s ago: a quiet writer's few bytes, not a minute.
    seen = [(10.0, 100), (10.2, 100), (10.4, 124)]
    assert lag_seconds_within(_behind(100, 60.0), seen, now=10.45) == pytest.approx(
        0.25
    )
    # The backend's own measure stays when it is the smaller.
    assert lag_seconds_within(_behind(100, 0.1), seen, now=10.45) == 0.1


def test_a_replica_behind_everything_seen_keeps_its_measure() -> None:
    seen = [(10.0, 200), (10.2, 300)]
    assert lag_seconds_within(_behind(100, 60.0), seen, now=10.3) == 60.0
    # Another GTID domain's position is not "had" either.
    other_domain = (1 << DOMAIN_SHIFT) + 500
    assert lag_seconds_within(_behind(100, 7.0), [(1.0, other_domain)] * 2, 2.0) == 7.0


def test_the_first_look_at_a_replica_behind_gives_no_seconds_yet() -> None:
    assert lag_seconds_within(_behind(100, 60.0), [(10.0, 124)], now=10.1) is None
    assert lag_seconds_within(_behind(100, 60.0), [], now=10.1) is None


def test_without_a_measure_the_writer_s_history_is_the_measure() -> None:
    # A PostgreSQL standby that has replayed no transaction since it started
    # has no age of one (NULL): what it had of the writer's positions says.
    seen = [(10.0, 100), (10.2, 124), (10.4, 150)]
    assert lag_seconds_within(_behind(124, None), seen, now=12.2) == pytest.approx(2.0)
    # Behind all the writer was seen at: at least since the oldest of them.
    assert lag_seconds_within(_behind(90, None), seen, now=12.0) == pytest.approx(2.0)
    # Another GTID domain's positions say nothing of it.
    other_domain = (1 << DOMAIN_SHIFT) + 500
    assert lag_seconds_within(_behind(90, None), [(1.0, other_domain)] * 2, 2.0) is None
    assert lag_seconds_within(_behind(None, 5.0), seen, now=10.3) == 5.0
    assert lag_seconds_within(_behind(None, None), seen, now=10.3) is None
    assert lag_seconds_within(_behind(124, 0.0), seen, now=10.3) == 0.0
