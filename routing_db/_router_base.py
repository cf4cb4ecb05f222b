"""What both faces of a router share: engines, options, hooks, status.

``Router`` (asyncio) and ``SyncRouter`` (threads) differ only in how their
engines are made and how the monitor runs; everything else is here, once.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Generic, TypeVar

from sqlalchemy.engine import URL, Engine
from sqlalchemy.ext.asyncio import AsyncEngine

from ._build import (
    DEFAULT_PING_AFTER_IDLE,
    engine_names_of,
    writer_reader,
)
from ._decision import DefaultRole, check_default_role
from ._engines import install_writer_hooks
from ._events import RoutingListener
from ._hooks import Hooks
from ._make import core, safe_url
from ._membership import Members
from ._misuse import OPENINGS
from ._options import (
    ConsistencyOptions,
    HealthOptions,
    ObservabilityOptions,
    check_balancing,
    options_group,
)
from ._policies import BalancingPolicy, make_policy
from ._positions import has_positions
from ._replicas import ReplicaSet
from ._retry import RetryPolicy
from ._router_constructors import Constructors, router_options
from ._shared_floor import CausalStore, SharedFloors
from ._starvation import StarvationDetector
from ._status import status_rows
from ._topology import Topology
from ._wiring import hook_engine, hook_replica

__all__ = ["DEFAULT_PING_AFTER_IDLE", "ROUTER_OPTIONS", "RouterBase"]

logger = logging.getLogger("routing_db")


E = TypeVar("E", AsyncEngine, Engine)


class RouterBase(Constructors, Generic[E]):
    """A writer, zero or more replicas, and how reads are spread over them."""

    writer: E
    _monitor: Any
    _detector: StarvationDetector | None

    def __init__(
        self,
        *,
        writer: E,
        replicas: Sequence[E] = (),
        default_role: DefaultRole = "writer",
        fallback_to_writer: bool = True,
        policy: str | BalancingPolicy = "round_robin",
        weights: Sequence[float] | None = None,
        max_writer_fallbacks: int | None = None,
        writer_read_weight: float = 0.0,
        retry: RetryPolicy | None = None,
        health: HealthOptions | None = None,
        consistency: ConsistencyOptions | None = None,
        observability: ObservabilityOptions | None = None,
        # Each field of the three groups may be given by name instead:
        require_standby: bool = True,
        max_lag_bytes: int | None = 16 * 1024 * 1024,
        max_lag_seconds: float | None = 60.0,
        monitor_interval: float = 0.5,
        eject_after: int = 1,
        eject_window: float = 10.0,
        ping_after_idle: float | None = None,
        writer_wait_timeout: float = 10.0,
        connect_timeout: float | None = 5.0,
        replica_read_timeout: float | None = 30.0,
        sticky_seconds: float = 2.0,
        causal_wait_timeout: float | None = None,
        causal_store: CausalStore | None = None,
        slow_query_seconds: float | None = None,
        log_slow_parameters: bool = False,
        hold_warning_seconds: float | None = None,
        checkout_wait_warning: float | None = None,
    ) -> None:
        names = engine_names_of(writer, replicas, sync=self._sync)
        check_default_role(default_role)
        check_balancing(
            weights=weights,
            replicas=len(replicas),
            max_writer_fallbacks=max_writer_fallbacks,
            writer_read_weight=writer_read_weight,
        )
        # Each group takes its own fields from the keywords given by name.
        by_name = {
            "require_standby": require_standby,
            "max_lag_bytes": max_lag_bytes,
            "max_lag_seconds": max_lag_seconds,
            "monitor_interval": monitor_interval,
            "eject_after": eject_after,
            "eject_window": eject_window,
            "ping_after_idle": ping_after_idle,
            "writer_wait_timeout": writer_wait_timeout,
            "connect_timeout": connect_timeout,
            "replica_read_timeout": replica_read_timeout,
            "sticky_seconds": sticky_seconds,
            "causal_wait_timeout": causal_wait_timeout,
            "causal_store": causal_store,
            "slow_query_seconds": slow_query_seconds,
            "log_slow_parameters": log_slow_parameters,
            "hold_warning_seconds": hold_warning_seconds,
            "checkout_wait_warning": checkout_wait_warning,
        }
        self.health = options_group(HealthOptions, health, by_name)
        self.consistency = options_group(ConsistencyOptions, consistency, by_name)
        self.observability = options_group(ObservabilityOptions, observability, by_name)
        self.writer = writer
        replicas = tuple(replicas)
        self.default_role: DefaultRole = default_role
        self.fallback_to_writer = fallback_to_writer
        self.max_writer_fallbacks = max_writer_fallbacks
        self.writer_read_weight = writer_read_weight
        self.retry = retry or RetryPolicy()
        reader = self._reader = writer_reader(writer, writer_read_weight)
        replica_set = ReplicaSet(
            [core(replica) for replica in replicas],
            writer_reader=core(reader) if reader else None,
            writer_weight=writer_read_weight,
            writer_name=names[writer],
            names=[names[replica] for replica in replicas],
            weights=weights or [1.0] * len(replicas),
            policy=make_policy(policy),
            health=self.health,
            positions=has_positions(writer.dialect.name)
            and all(has_positions(replica.dialect.name) for replica in replicas),
            sticky_seconds=self.consistency.sticky_seconds,
            causal_wait_timeout=self.consistency.causal_wait_timeout,
        )
        store = self.consistency.causal_store
        self.topology = Topology(
            writer=writer,
            replicas=replicas,
            names=names,
            writer_reader=reader,
            replica_set=replica_set,
            max_writer_fallbacks=max_writer_fallbacks,
            shared=None if store is None else SharedFloors(store),
        )
        self._hooks = Hooks()
        self._install_hooks()
        self._started = False
        self._members = Members(
            self.topology,
            self._hooks,
            health=self.health,
            observability=self.observability,
            joined=self._joined,
            sync=self._sync,
        )
        self._monitor = self._make_monitor()
        self._urls = tuple(safe_url(core(e).url) for _, e in self.topology.engines())
        OPENINGS.opened(self._urls)

    def _make_monitor(self) -> Any:
        raise NotImplementedError

    def _reopen(self) -> None:
        """``start()``'s first step: after ``dispose()``, usable again."""
        if self.topology.closed:
            self._install_hooks()
            self.topology.closed = False
            OPENINGS.opened(self._urls)
        self._started = True

    def _stopping(self) -> None:
        """``stop()``'s first step: reads probe ejected replicas themselves."""
        self._started = False
        self.topology.replica_set.half_open = True

    def _closing(self) -> None:
        """``dispose()``'s first step: no new sessions, no starvation scans."""
        if not self.topology.closed:
            OPENINGS.closed(self._urls)
        self.topology.closed = True
        if self._detector is not None:
            self._detector.close()
            self._detector = None

    def _joined(self) -> None:
        if self._started and not self._monitor.running:
            self._monitor.start()
            self.topology.replica_set.half_open = False

    def _after_round(self) -> None:
        if self._detector is not None:
            self._detector.scan()

    def _install_hooks(self) -> None:
        hooks, health, watch = self._hooks, self.health, self.observability
        self._detector = (
            StarvationDetector(
                self.topology,
                hold_warning_seconds=watch.hold_warning_seconds,
                wait_warning_fraction=watch.checkout_wait_warning,
            )
            if watch.hold_warning_seconds is not None
            or watch.checkout_wait_warning is not None
            else None
        )
        replica_set = self.topology.replica_set
        replica_set.install_hooks(hooks)
        if self.topology.discovery is not None:
            self.topology.discovery.install(hooks)
        install_writer_hooks(
            self.writer,
            hooks,
            reader=self._reader,
            name=self.topology.name(self.writer),
            lost=self._writer_reached_a_standby,
        )
        hook_engine(
            self.writer, hooks, name=self.topology.name(self.writer), health=health,
            observability=watch,
        )  # fmt: skip
        for name, replica in self.topology.engines():
            if replica is not self.writer:
                hook_replica(
                    replica, hooks, name=name, health=health, observability=watch,
                    replica_set=replica_set,
                )  # fmt: skip

    def _writer_reached_a_standby(self) -> None:
        # A cluster's writer is discovery's to judge; a URL's is lost until a
        # connection reaches a server that takes writes again.
        if self.topology.discovery is None:
            self.topology.writer_lost()

    @property
    def ping_after_idle(self) -> float | None:
        """Seconds idle after which a pooled connection is pinged at checkout."""
        return self.health.ping_after_idle

    @property
    def fallbacks_total(self) -> int:
        """Reads served by the writer for want of a replica, since creation."""
        return self.topology.fallbacks_total

    @property
    def replicas(self) -> tuple[E, ...]:
        """The replica engines, in order (those being removed too)."""
        return self.topology.app_replicas  # type: ignore[return-value]

    def add_listener(self, listener: RoutingListener) -> None:
        """Report routing events (statements routed, ejections...) to ``listener``."""
        self.topology.listeners.append(listener)

    def remove_listener(self, listener: RoutingListener) -> None:
        """Stop reporting to ``listener``."""
        self.topology.listeners.remove(listener)

    def status(self) -> list[dict[str, Any]]:
        """Per engine: name, role, state, health, lag and pool stats; no secrets."""
        return status_rows(self.topology)

    def add_replica(
        self,
        replica: str | URL | E,
        *,
        name: str | None = None,
        weight: float = 1.0,
    ) -> str:
        """Add a replica at runtime; return its name.

        It serves once the monitor has found it a standby (within one
        ``monitor_interval`` of the router's running monitor). A URL gets an
        engine made as ``from_urls`` made the others.
        """
        return self._members.add_replica(replica, name, weight)

    def add_node(
        self, url: str | URL, *, name: str | None = None, weight: float = 1.0
    ) -> str:
        """Add a node to a ``from_cluster`` router at runtime; return its name.

        The monitor asks its role in its next round; a standby serves reads
        from then on.
        """
        return self._members.add_node(url, name, weight)

    def __repr__(self) -> str:
        if self.topology.discovery is not None:
            nodes = ", ".join(repr(safe_url(r.url)) for r in self.replicas)
            return f"{type(self).__name__}(cluster=[{nodes}])"
        replicas = ", ".join(repr(safe_url(r.url)) for r in self.replicas)
        return (
            f"{type(self).__name__}(writer={safe_url(self.writer.url)!r}, "
            f"replicas=[{replicas}])"
        )

    __str__ = __repr__


# Everything Router() takes besides its engines, read from its signature.
ROUTER_OPTIONS = router_options(RouterBase)
