"""Balancing policies: which eligible replica serves a new transaction."""

from __future__ import annotations

import dataclasses
import itertools
import random
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from .._exceptions import ConfigurationError

__all__ = [
    "BalancingPolicy",
    "Candidate",
    "LeastBusy",
    "RandomChoice",
    "RoundRobin",
    "Weighted",
    "make_policy",
]


@dataclasses.dataclass(frozen=True, slots=True)
class Candidate:
    """An eligible replica as a policy sees it."""

    index: int  # position in ``router.replicas``; the writer comes after them
    name: str
    weight: float
    # Pool numbers, filled unless the policy says ``uses_pool_stats = False``.
    checked_out: int
    capacity: int  # pool_size + max_overflow; 0 when the pool has no limit
    # Recent mean time a connection to it stays checked out (seconds), when
    # the policy asked for it (``uses_latency``) and it has been measured.
    latency: float | None = None
    # The writer itself, offered for reads when ``writer_read_weight`` > 0.
    writer: bool = False

    @property
    def busy(self) -> float:
        """Checked-out connections relative to the pool's capacity."""
        return self.checked_out / self.capacity if self.capacity else self.checked_out


@runtime_checkable
class BalancingPolicy(Protocol):
    """Picks one of a non-empty sequence of candidates."""

    def choose(self, candidates: Sequence[Candidate]) -> Candidate:
        """Return the candidate that serves the next transaction."""
        ...


class RoundRobin:
    """Each candidate in turn."""

    uses_pool_stats = False

    def __init__(self) -> None:
        self._counter = itertools.count()

    def choose(self, candidates: Sequence[Candidate]) -> Candidate:
        """Return the next candidate in turn."""
        return candidates[next(self._counter) % len(candidates)]


class RandomChoice:
    """A uniformly random candidate."""

    uses_pool_stats = False

    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()

    def choose(self, candidates: Sequence[Candidate]) -> Candidate:
        """Return a random candidate."""
        return self._rng.choice(candidates)


class Weighted:
    """A random candidate, in proportion to its weight."""

    uses_pool_stats = False

    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()

    def choose(self, candidates: Sequence[Candidate]) -> Candidate:
        """Return a candidate drawn by weight."""
        weights = [candidate.weight for candidate in candidates]
        if not any(weights):
            return self._rng.choice(candidates)
        return self._rng.choices(candidates, weights=weights)[0]


class LeastBusy:
    """The candidate with the fewest checked-out connections for its pool size,
    weighted by how long its connections stay checked out."""

    uses_latency = True
    uses_pool_stats = True

    def __init__(self) -> None:
        # Ties rotate, so an idle cluster still spreads its load.
        self._counter = itertools.count()

    def choose(self, candidates: Sequence[Candidate]) -> Candidate:
        """Return the least loaded candidate; ties rotate."""
        known = [c.latency for c in candidates if c.latency is not None]
        # Unmeasured (new, or not used lately): assume the best, so it gets
        # traffic and a fresh measurement.
        optimistic = min(known, default=1.0)

        def load(candidate: Candidate) -> float:
            # Connections in use after this one, for its pool size, times how
            # long each tends to stay: a slow replica fills up "sooner".
            share = (candidate.checked_out + 1) / (candidate.capacity or 1)
            latency = candidate.latency if candidate.latency is not None else optimistic
            return share * latency

        loads = [load(candidate) for candidate in candidates]
        least = min(loads)
        tied = [c for c, value in zip(candidates, loads, strict=True) if value == least]
        return tied[next(self._counter) % len(tied)]


_POLICIES: dict[str, type[RoundRobin | RandomChoice | Weighted | LeastBusy]] = {
    "round_robin": RoundRobin,
    "random": RandomChoice,
    "weighted": Weighted,
    "least_busy": LeastBusy,
}


def make_policy(policy: str | BalancingPolicy) -> BalancingPolicy:
    """A policy object from its name, or the object itself."""
    if isinstance(policy, str):
        try:
            return _POLICIES[policy]()
        except KeyError:
            raise ConfigurationError(
                f"unknown policy {policy!r}; use one of "
                + ", ".join(sorted(_POLICIES))
                + " or an object with a choose(candidates) method"
            ) from None
    if not isinstance(policy, BalancingPolicy):
        raise ConfigurationError(
            "policy must be a name or an object with a choose(candidates) method"
        )
    return policy
