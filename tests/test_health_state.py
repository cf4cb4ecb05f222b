"""Ejection, backoff and lag hysteresis as pure bookkeeping (no database)."""

from __future__ import annotations

import pytest

from routing_db import ConfigurationError
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
