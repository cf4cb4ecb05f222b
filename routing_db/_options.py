"""Every router option, declared once, as data; the option groups built on it.

``OPTIONS`` names each option with its default, its range and a one-line
description. The option groups (frozen objects checked when made, as httpx
has ``Timeout`` and ``Limits``) take their defaults and their checks from it,
``Router``'s keywords their defaults, ``RoutingSettings`` its fields' defaults,
descriptions and checks, and the configuration page its table; tests hold the
signatures to it. So 0, a negative number or ``None`` gets the same answer
from the router, its groups and the environment.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from ._exceptions import ConfigurationError

if TYPE_CHECKING:
    from ._causal.store import CausalStore

__all__ = [
    "BY_NAME",
    "OPTIONS",
    "ROUTER_KEYWORDS",
    "ConsistencyOptions",
    "HealthOptions",
    "ObservabilityOptions",
    "Option",
    "check_balancing",
    "default",
    "options_group",
]

G = TypeVar("G")
Group = Literal["router", "health", "consistency", "observability"]
_UNSET: Any = object()


@dataclasses.dataclass(frozen=True, kw_only=True)
class Option:
    """One router option: its default, its range and what it does."""

    name: str
    group: Group
    default: Any
    doc: str
    # The range of a number: at least ``minimum`` (above it, with
    # ``exclusive``), at most ``maximum``; ``off``: None turns it off.
    minimum: float | None = None
    exclusive: bool = False
    maximum: float | None = None
    off: bool = False
    # Infinity refused too (a weight must be a real share; a timeout or a
    # limit of infinity means "never", as a large number would).
    finite: bool = False
    unit: str = ""
    # Where routing_db makes the engines (from_urls, from_cluster,
    # from_settings) and this default differs: that one.
    built_default: Any = _UNSET
    # Router(...) takes it by name (every group field but the probe backoff).
    keyword: bool = True

    def check(self, value: Any) -> None:
        """Raise ``ConfigurationError`` if ``value`` is out of range."""
        if value is None:
            if self.off or self.default is None:
                return
            raise ConfigurationError(f"{self.name} must be {self.rule()}")
        if self.minimum is None and self.maximum is None:
            return
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigurationError(f"{self.name} must be {self.rule()}")
        low = self.minimum
        too_low = low is not None and (value <= low if self.exclusive else value < low)
        too_high = self.maximum is not None and value > self.maximum
        unbounded = self.finite and math.isinf(value)
        if too_low or too_high or unbounded or math.isnan(value):
            raise ConfigurationError(f"{self.name} must be {self.rule()}")

    def rule(self) -> str:
        """The range in words: ``> 0 seconds or None (off)``."""
        parts = []
        if self.minimum is not None:
            parts.append(f"{'>' if self.exclusive else '>='} {self.minimum:g}")
        if self.maximum is not None:
            parts.append(f"<= {self.maximum:g}")
        rule = " and ".join(parts) + self.unit if parts else "set"
        if self.finite:
            rule = f"a finite number {rule}"
        return f"{rule} or None (off)" if self.off else rule

    @property
    def built(self) -> Any:
        """The default where routing_db makes the engines."""
        return self.default if self.built_default is _UNSET else self.built_default


def _seconds(name: str, group: Group, default: Any, doc: str, **kw: Any) -> Option:
    kw.setdefault("minimum", 0)
    return Option(
        name=name, group=group, default=default, doc=doc, unit=" seconds", **kw
    )


OPTIONS: tuple[Option, ...] = (
    Option(
        name="default_role",
        group="router",
        default="writer",
        doc="Where statements go outside read_only/use_writer: 'writer', or "
        "'auto' (reads to replicas, with read-your-writes).",
    ),
    Option(
        name="fallback_to_writer",
        group="router",
        default=True,
        doc="With no replica available, reads go to the writer (else "
        "NoReplicaAvailable).",
    ),
    Option(
        name="startup_check",
        group="router",
        default="warn",
        doc="When the router starts, reach every server once: 'warn' logs each "
        "problem, 'strict' raises ConfigurationError listing them, 'off' skips it.",
    ),
    Option(
        name="policy",
        group="router",
        default="round_robin",
        doc="How reads are spread: round_robin, random, weighted, least_busy, "
        "or a BalancingPolicy.",
    ),
    Option(
        name="weights",
        group="router",
        default=None,
        doc="One weight >= 0 per replica, for the weighted policy.",
    ),
    Option(
        name="max_writer_fallbacks",
        group="router",
        default=None,
        minimum=0,
        off=True,
        doc="At most this many transactions read on the writer for want of a "
        "replica at once.",
    ),
    Option(
        name="writer_read_weight",
        group="router",
        default=0.0,
        minimum=0,
        finite=True,
        doc="The writer's share of replica reads, as one more weighted reader "
        "(0: replicas only).",
    ),
    Option(
        name="retry",
        group="router",
        default=None,
        doc="The tenacity policy of connection-level retries (RetryPolicy).",
    ),
    Option(
        name="require_standby",
        group="health",
        default=True,
        doc="A replica must be a standby (read-only): one that takes writes "
        "serves no reads.",
    ),
    Option(
        name="max_lag_bytes",
        group="health",
        default=16 * 1024 * 1024,
        minimum=0,
        off=True,
        unit=" bytes",
        doc="A replica further behind than this serves no reads.",
    ),
    _seconds(
        "max_lag_seconds",
        "health",
        60.0,
        off=True,
        doc="A replica whose last replayed commit is older than this, while "
        "the writer moves, serves no reads.",
    ),
    _seconds(
        "monitor_interval",
        "health",
        0.5,
        exclusive=True,
        doc="How often the monitor checks the writer and the replicas.",
    ),
    Option(
        name="eject_after",
        group="health",
        default=1,
        minimum=1,
        doc="Connection failures within eject_window that eject a replica.",
    ),
    _seconds(
        "eject_window",
        "health",
        10.0,
        exclusive=True,
        doc="The window in which eject_after failures eject a replica.",
    ),
    _seconds(
        "probe_initial",
        "health",
        0.25,
        exclusive=True,
        keyword=False,
        doc="The first wait before an ejected replica is tried again.",
    ),
    _seconds(
        "probe_max",
        "health",
        2.0,
        exclusive=True,
        keyword=False,
        doc="The longest wait between tries of an ejected replica.",
    ),
    _seconds(
        "ping_after_idle",
        "health",
        None,
        off=True,
        built_default=1.0,
        doc="A pooled connection idle this long is pinged at checkout "
        "(routing_db's engines: 1 s unless pool_pre_ping is set).",
    ),
    _seconds(
        "writer_wait_timeout",
        "health",
        10.0,
        doc="How long writes wait for a writer during a failover before "
        "NoWriterAvailable.",
    ),
    _seconds(
        "connect_timeout",
        "health",
        5.0,
        exclusive=True,
        off=True,
        doc="How long a new connection may take (None: the driver's own).",
    ),
    _seconds(
        "replica_read_timeout",
        "health",
        30.0,
        exclusive=True,
        off=True,
        doc="How long a replica statement may take before it is cancelled "
        "(ReplicaReadTimeout); the writer's are never cut.",
    ),
    _seconds(
        "sticky_seconds",
        "consistency",
        2.0,
        doc="After a write whose position is unknown, reads stay on the "
        "writer this long.",
    ),
    _seconds(
        "causal_wait_timeout",
        "consistency",
        None,
        off=True,
        doc="How long a read waits for a replica to replay its context's "
        "writes before it goes to the writer (None: it does not wait).",
    ),
    Option(
        name="causal_store",
        group="consistency",
        default=None,
        doc="Positions per application key, shared by processes (routing_db.redis).",
    ),
    _seconds(
        "slow_query_seconds",
        "observability",
        None,
        off=True,
        doc="Statements slower than this are logged (routing_db.slow).",
    ),
    Option(
        name="log_slow_parameters",
        group="observability",
        default=False,
        doc="The slow-query log includes the statement's parameters.",
    ),
    _seconds(
        "hold_warning_seconds",
        "observability",
        None,
        off=True,
        doc="A connection held longer than this is reported with the code "
        "that holds it.",
    ),
    Option(
        name="checkout_wait_warning",
        group="observability",
        default=None,
        minimum=0,
        exclusive=True,
        maximum=1,
        off=True,
        unit=" (a fraction of pool_timeout)",
        doc="Checkouts waiting longer than this fraction of pool_timeout are reported.",
    ),
)
BY_NAME: dict[str, Option] = {option.name: option for option in OPTIONS}
# Everything Router() takes besides its engines: the options by name, and
# each group whole.
ROUTER_KEYWORDS = frozenset(
    {option.name for option in OPTIONS if option.keyword}
    | {"health", "consistency", "observability"}
)


def default(name: str) -> Any:
    """Option ``name``'s default (the router's and the settings')."""
    return BY_NAME[name].default


def _check_fields(group: object) -> None:
    for field in dataclasses.fields(group):  # type: ignore[arg-type]
        BY_NAME[field.name].check(getattr(group, field.name))


@dataclasses.dataclass(frozen=True, kw_only=True)
class HealthOptions:
    """How replicas are checked, when one is ejected, and how it comes back."""

    require_standby: bool = default("require_standby")
    # On by default (None: off), as GitLab's load balancer has them: a
    # replica whose replication stopped stops serving once past either.
    max_lag_bytes: int | None = default("max_lag_bytes")
    max_lag_seconds: float | None = default("max_lag_seconds")
    monitor_interval: float = default("monitor_interval")
    eject_after: int = default("eject_after")
    eject_window: float = default("eject_window")
    probe_initial: float = default("probe_initial")
    probe_max: float = default("probe_max")
    ping_after_idle: float | None = default("ping_after_idle")
    writer_wait_timeout: float = default("writer_wait_timeout")
    connect_timeout: float | None = default("connect_timeout")
    # The writer has no such bound: a long write must not be cut by us.
    replica_read_timeout: float | None = default("replica_read_timeout")

    def __post_init__(self) -> None:
        _check_fields(self)

    @property
    def check_timeout(self) -> float:
        """How long one of the monitor's checks may take on one node."""
        # A node that stopped answering must not stall the checks of others.
        return max(2 * self.monitor_interval, 2.0)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ConsistencyOptions:
    """How long reads stay on the writer after a write, and how long they wait."""

    sticky_seconds: float = default("sticky_seconds")
    causal_wait_timeout: float | None = default("causal_wait_timeout")
    causal_store: CausalStore | None = default("causal_store")

    def __post_init__(self) -> None:
        _check_fields(self)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ObservabilityOptions:
    """The slow-query log and the starvation detector's thresholds."""

    slow_query_seconds: float | None = default("slow_query_seconds")
    log_slow_parameters: bool = default("log_slow_parameters")
    hold_warning_seconds: float | None = default("hold_warning_seconds")
    checkout_wait_warning: float | None = default("checkout_wait_warning")

    def __post_init__(self) -> None:
        _check_fields(self)


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
    BY_NAME["max_writer_fallbacks"].check(max_writer_fallbacks)
    BY_NAME["writer_read_weight"].check(writer_read_weight)
