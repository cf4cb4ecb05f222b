"""The router's option groups and their range checks (no engines, no I/O).

Each group is one frozen object, checked when it is made, as httpx has
``Timeout`` and ``Limits``; ``Router`` also takes every field of a group by
name, and a test ties those keyword defaults to the fields' defaults.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from ._exceptions import ConfigurationError

if TYPE_CHECKING:
    from ._shared_floor import CausalStore

__all__ = [
    "ConsistencyOptions",
    "HealthOptions",
    "ObservabilityOptions",
    "check_balancing",
    "options_group",
]

G = TypeVar("G")


def _seconds_or_none(owner: object, *fields: str) -> None:
    for field in fields:
        value = getattr(owner, field)
        if value is not None and value < 0:
            raise ConfigurationError(f"{field} must be >= 0 seconds or None (off)")


@dataclasses.dataclass(frozen=True, kw_only=True)
class HealthOptions:
    """How replicas are checked, when one is ejected, and how it comes back."""

    require_standby: bool = True
    # On by default (None: off), as GitLab's load balancer has them: a
    # replica whose replication stopped stops serving once past either.
    max_lag_bytes: int | None = 16 * 1024 * 1024
    max_lag_seconds: float | None = 60.0
    monitor_interval: float = 0.5
    eject_after: int = 1
    eject_window: float = 10.0
    probe_initial: float = 0.25
    probe_max: float = 2.0
    ping_after_idle: float | None = None
    writer_wait_timeout: float = 10.0
    # Seconds a new connection may take (None: the driver's own default).
    connect_timeout: float | None = 5.0
    # Seconds a statement on a replica may take (None: unbounded). The
    # writer has no such bound: a long write must not be cut by us.
    replica_read_timeout: float | None = 30.0

    def __post_init__(self) -> None:
        if self.eject_after < 1:
            raise ConfigurationError("eject_after must be at least 1")
        for field in ("monitor_interval", "eject_window", "probe_initial", "probe_max"):
            if getattr(self, field) <= 0:
                raise ConfigurationError(f"{field} must be > 0 seconds")
        if self.max_lag_bytes is not None and self.max_lag_bytes < 0:
            raise ConfigurationError("max_lag_bytes must be >= 0 or None (off)")
        _seconds_or_none(self, "max_lag_seconds", "ping_after_idle")
        for field in ("connect_timeout", "replica_read_timeout"):
            if getattr(self, field) is not None and getattr(self, field) <= 0:
                raise ConfigurationError(f"{field} must be > 0 seconds or None (off)")
        if self.writer_wait_timeout < 0:
            raise ConfigurationError("writer_wait_timeout must be >= 0 seconds")

    @property
    def check_timeout(self) -> float:
        """How long one of the monitor's checks may take on one node."""
        # A node that stopped answering must not stall the checks of others.
        return max(2 * self.monitor_interval, 2.0)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ConsistencyOptions:
    """How long reads stay on the writer after a write, and how long they wait."""

    sticky_seconds: float = 2.0
    causal_wait_timeout: float | None = None
    # Positions per application key, shared by processes (routing_db.redis).
    causal_store: CausalStore | None = None

    def __post_init__(self) -> None:
        if self.sticky_seconds < 0:
            raise ConfigurationError("sticky_seconds must be >= 0")
        _seconds_or_none(self, "causal_wait_timeout")


@dataclasses.dataclass(frozen=True, kw_only=True)
class ObservabilityOptions:
    """The slow-query log and the starvation detector's thresholds."""

    slow_query_seconds: float | None = None
    log_slow_parameters: bool = False
    hold_warning_seconds: float | None = None
    checkout_wait_warning: float | None = None

    def __post_init__(self) -> None:
        _seconds_or_none(self, "slow_query_seconds", "hold_warning_seconds")
        fraction = self.checkout_wait_warning
        if fraction is not None and not 0 < fraction <= 1:
            raise ConfigurationError(
                "checkout_wait_warning is a fraction of pool_timeout in (0, 1]"
            )


def options_group(cls: type[G], given: G | None, by_name: Mapping[str, Any]) -> G:
    """The group ``cls``: ``given``, or made from its fields in ``by_name``.

    ``by_name`` holds every option given by keyword (each group takes its
    own fields from it). A field that differs from its default while the
    group object is given too is an error: one of the two would be ignored.
    """
    fields = {f.name: f.default for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    mine = {name: value for name, value in by_name.items() if name in fields}
    if given is None:
        return cls(**mine)
    if not isinstance(given, cls):
        raise ConfigurationError(
            f"expected a {cls.__name__}, got {type(given).__name__}"
        )
    both = sorted(name for name, value in mine.items() if value != fields[name])
    if both:
        raise ConfigurationError(
            f"{', '.join(both)} given both by name and in {cls.__name__}: "
            "give each option once"
        )
    return given


def check_balancing(
    *,
    weights: Sequence[float] | None,
    replicas: int,
    max_writer_fallbacks: int | None,
    writer_read_weight: float,
) -> None:
    """Raise ``ConfigurationError`` for a balancing option out of range."""
    if weights is not None and (
        len(weights) != replicas or any(w < 0 for w in weights)
    ):
        raise ConfigurationError(
            f"weights needs one number >= 0 per replica ({replicas}), "
            f"got {len(weights)}"
        )
    if max_writer_fallbacks is not None and max_writer_fallbacks < 0:
        raise ConfigurationError("max_writer_fallbacks must be >= 0 or None")
    if not 0 <= writer_read_weight < float("inf"):
        raise ConfigurationError("writer_read_weight must be a number >= 0")
