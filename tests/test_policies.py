"""Balancing policies as pure choice functions (no database)."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence

import pytest

from routing_db import (
    BalancingPolicy,
    Candidate,
    ConfigurationError,
    LeastBusy,
    RandomChoice,
    RoundRobin,
    Weighted,
)
from routing_db._replicas.policies import make_policy


def candidates(
    *busy: tuple[int, int], weights: Sequence[float] = ()
) -> list[Candidate]:
    return [
        Candidate(
            index=i,
            name=f"r{i}",
            weight=weights[i] if weights else 1.0,
            checked_out=out,
            capacity=cap,
        )
        for i, (out, cap) in enumerate(busy)
    ]


def picks(policy: BalancingPolicy, cands: list[Candidate], n: int) -> Counter[int]:
    return Counter(policy.choose(cands).index for _ in range(n))


def test_round_robin_takes_turns() -> None:
    cands = candidates((0, 5), (0, 5), (0, 5))
    policy = RoundRobin()
    assert [policy.choose(cands).index for _ in range(6)] == [0, 1, 2, 0, 1, 2]


def test_random_uses_every_candidate() -> None:
    counts = picks(RandomChoice(random.Random(1)), candidates((0, 5), (0, 5)), 1000)
    assert set(counts) == {0, 1}
    assert 400 < counts[0] < 600


def test_weighted_follows_the_weights() -> None:
    cands = candidates((0, 5), (0, 5), (0, 5), weights=(3, 1, 0))
    counts = picks(Weighted(random.Random(2)), cands, 4000)
    assert counts[2] == 0
    assert 2.5 < counts[0] / counts[1] < 3.5


def test_weighted_with_all_zero_weights_still_chooses() -> None:
    cands = candidates((0, 5), (0, 5), weights=(0, 0))
    assert Weighted(random.Random(3)).choose(cands) in cands


def test_least_busy_is_relative_to_pool_size() -> None:
    # 3 of 10 is less busy than 2 of 5.
    cands = candidates((2, 5), (3, 10))
    assert LeastBusy().choose(cands).index == 1


def test_least_busy_ties_rotate() -> None:
    counts = picks(LeastBusy(), candidates((1, 5), (1, 5), (4, 5)), 10)
    assert counts == Counter({0: 5, 1: 5})


def test_least_busy_weighs_by_recent_hold_time() -> None:
    slow = Candidate(index=0, name="slow", weight=1, checked_out=0, capacity=5,
                     latency=0.020)  # fmt: skip
    fast = Candidate(index=1, name="fast", weight=1, checked_out=3, capacity=5,
                     latency=0.002)  # fmt: skip
    # 1/5 x 20 ms = 4 ms of queued work on the slow one, 4/5 x 2 ms on the fast.
    assert LeastBusy().choose([slow, fast]).name == "fast"
    unknown = Candidate(index=2, name="new", weight=1, checked_out=0, capacity=5)
    # Not measured yet: counted as the fastest known, so it gets tried.
    assert LeastBusy().choose([slow, fast, unknown]).name == "new"


def test_unlimited_pool_counts_connections() -> None:
    assert candidates((3, 0))[0].busy == 3


def test_make_policy() -> None:
    assert isinstance(make_policy("least_busy"), LeastBusy)
    custom = RoundRobin()
    assert make_policy(custom) is custom
    with pytest.raises(ConfigurationError, match="round_robin"):
        make_policy("fastest")
    with pytest.raises(ConfigurationError):
        make_policy(object())  # type: ignore[arg-type]


def test_a_custom_policy_is_a_protocol() -> None:
    class First:
        def choose(self, candidates: Sequence[Candidate]) -> Candidate:
            return candidates[0]

    assert isinstance(First(), BalancingPolicy)
    assert make_policy(First()).choose(candidates((0, 1), (0, 1))).index == 0
