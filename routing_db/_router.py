"""``Router``: the writer and replica engines, replica choice, status, disposal."""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any

from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine

from ._build import DEFAULT_PING_AFTER_IDLE, EngineMaker, engine_names, idle_check
from ._decision import DefaultRole, check_default_role
from ._engines import (
    check_url,
    engine_name,
    install_writer_hooks,
    safe_url,
)
from ._events import RoutingListener
from ._exceptions import ConfigurationError
from ._hooks import Hooks
from ._membership import drain, join
from ._monitor import Monitor
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
from ._starvation import StarvationDetector
from ._status import status_rows
from ._topology import Topology
from ._wiring import hook_engine, hook_replica

if TYPE_CHECKING:
    from ._settings import RoutingSettings

__all__ = ["DEFAULT_PING_AFTER_IDLE", "ROUTER_OPTIONS", "Router"]

logger = logging.getLogger("routing_db")

_READ_ONLY = "postgresql_readonly"


def _writer_reader(writer: AsyncEngine, weight: float) -> AsyncEngine | None:
    """The writer as one more reader: same pool, every transaction READ ONLY."""
    if not weight:
        return None
    characteristics = getattr(writer.dialect, "connection_characteristics", {})
    if _READ_ONLY not in characteristics:
        raise ConfigurationError(
            "writer_read_weight needs a PostgreSQL writer (its read transactions "
            f"are made READ ONLY); {writer.dialect.name} is not supported"
        )
    # A distinct Engine object over the writer's pool: the session keeps its
    # connection apart from the writer's own, so a later write in the same
    # transaction never lands on the read-only one; SQLAlchemy resets the
    # characteristic when the connection returns to the pool.
    return writer.execution_options(**{_READ_ONLY: True})


class Router:
    """Owns one writer and zero or more replica engines and picks replicas."""

    def __init__(
        self,
        *,
        writer: AsyncEngine,
        replicas: Sequence[AsyncEngine] = (),
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
        max_lag_bytes: int | None = None,
        max_lag_seconds: float | None = None,
        monitor_interval: float = 0.5,
        eject_after: int = 1,
        eject_window: float = 10.0,
        ping_after_idle: float | None = None,
        writer_wait_timeout: float = 10.0,
        sticky_seconds: float = 2.0,
        causal_wait_timeout: float | None = None,
        slow_query_seconds: float | None = None,
        log_slow_parameters: bool = False,
        hold_warning_seconds: float | None = None,
        checkout_wait_warning: float | None = None,
    ) -> None:
        if writer is None:
            raise ConfigurationError("Router needs a writer engine")
        for engine in (writer, *replicas):
            if not isinstance(engine, AsyncEngine):
                raise ConfigurationError(
                    "Router takes AsyncEngine objects (create_async_engine with an "
                    f"asyncio driver), got {type(engine).__name__}"
                )
        if any(replica is writer for replica in replicas):
            # Its connections would be made read-only: the writer could not write.
            raise ConfigurationError("the writer engine cannot also be a replica")
        if len({id(replica) for replica in replicas}) != len(replicas):
            raise ConfigurationError("the same replica engine is listed twice")
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
            "sticky_seconds": sticky_seconds,
            "causal_wait_timeout": causal_wait_timeout,
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
        names = self._engine_names(replicas)
        reader = self._reader = _writer_reader(writer, writer_read_weight)
        replica_set = ReplicaSet(
            [replica.sync_engine for replica in replicas],
            writer_reader=reader.sync_engine if reader else None,
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
        self.topology = Topology(
            writer=writer,
            replicas=replicas,
            names=names,
            writer_reader=reader,
            replica_set=replica_set,
            max_writer_fallbacks=max_writer_fallbacks,
        )
        self._hooks = Hooks()
        self._install_hooks()
        self._started = False
        # How add_replica makes an engine from a URL (from_urls: as it did).
        self._new_replica = EngineMaker({}, None, pgbouncer=False)
        self._monitor = Monitor(
            self.topology,
            interval=self.health.monitor_interval,
            after_round=self._after_round,
        )

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
        install_writer_hooks(self.writer, hooks, reader=self._reader)
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

    @property
    def ping_after_idle(self) -> float | None:
        """Seconds idle after which a pooled connection is pinged at checkout."""
        return self.health.ping_after_idle

    @property
    def fallbacks_total(self) -> int:
        """Reads served by the writer for want of a replica, since creation."""
        return self.topology.fallbacks_total

    @property
    def replicas(self) -> tuple[AsyncEngine, ...]:
        """The replica engines, in order (those being removed too)."""
        return self.topology.async_replicas

    def _engine_names(
        self, replicas: tuple[AsyncEngine, ...]
    ) -> dict[AsyncEngine, str]:
        given = [e.sync_engine.logging_name for e in (self.writer, *replicas)]
        named = [name for name in given if name]
        if len(set(named)) != len(named):
            # Two engines under one name would share their metrics and logs.
            raise ConfigurationError(
                f"engine names (logging_name) must be unique, got {named}"
            )
        names: dict[AsyncEngine, str] = {self.writer: engine_name(self.writer)}
        seen: dict[str, int] = {}
        for replica in replicas:
            base = engine_name(replica)
            seen[base] = seen.get(base, 0) + 1
            names[replica] = base if seen[base] == 1 else f"{base}#{seen[base]}"
        return names

    @classmethod
    def from_urls(
        cls,
        writer_url: str | URL,
        replica_urls: Sequence[str | URL] = (),
        *,
        writer_kwargs: Mapping[str, Any] | None = None,
        replica_kwargs: Mapping[str, Any] | None = None,
        router_options: Mapping[str, Any] | None = None,
        pgbouncer: bool = False,
        writer_name: str | None = None,
        replica_names: Sequence[str] | None = None,
        **engine_kwargs: Any,
    ) -> Router:
        """Create the engines; ``engine_kwargs`` go to every ``create_async_engine``.

        Router options (``default_role``, ``policy``, ``max_lag_bytes``, ...) may
        be given here by name too, or collected in ``router_options``.
        ``pgbouncer=True``: the servers sit behind PgBouncer in transaction
        pooling mode (no prepared statement outlives its transaction).
        ``writer_name`` / ``replica_names`` label the engines in metrics, logs
        and ``status()`` (their ``logging_name``) instead of ``host:port/db``.
        """
        if not writer_url:
            raise ConfigurationError("writer_url is required")
        if isinstance(replica_urls, str | URL):
            raise ConfigurationError("replica_urls must be a list of URLs")
        names = engine_names(writer_name, replica_names, len(replica_urls))
        options = dict(router_options or {})
        for name in ROUTER_OPTIONS.intersection(engine_kwargs):
            options[name] = engine_kwargs.pop(name)
        writer_u = check_url(writer_url, field="writer_url")
        replica_us = [
            check_url(url, field=f"replica_urls[{i}]")
            for i, url in enumerate(replica_urls)
        ]
        idle_check(engine_kwargs, options)
        make_writer = EngineMaker(engine_kwargs, writer_kwargs, pgbouncer)
        make_replica = EngineMaker(engine_kwargs, replica_kwargs, pgbouncer)
        router = cls(
            writer=make_writer(writer_u, "writer_url", names[0]),
            replicas=[
                make_replica(url, f"replica_urls[{i}]", names[i + 1])
                for i, url in enumerate(replica_us)
            ],
            **options,
        )
        router._new_replica = make_replica
        return router

    @classmethod
    def from_settings(cls, settings: RoutingSettings | None = None) -> Router:
        """Build a router from ``RoutingSettings``; ``None`` reads the environment."""
        # Imported here so the core never needs pydantic-settings at import time.
        from ._settings import RoutingSettings

        if settings is None:
            settings = RoutingSettings()
        return cls.from_urls(**settings.router_kwargs())

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
        replica: str | URL | AsyncEngine,
        *,
        name: str | None = None,
        weight: float = 1.0,
    ) -> str:
        """Add a replica at runtime; return its name.

        It serves once the monitor has found it a standby (within one
        ``monitor_interval`` of the router's running monitor). A URL gets an
        engine made as ``from_urls`` made the others.
        """
        if isinstance(replica, AsyncEngine):
            engine = replica
        else:
            url = check_url(replica, field="add_replica")
            engine = self._new_replica(url, "add_replica", name)
        name = name or engine_name(engine)
        if name in {self.topology.name(e) for e in (self.writer, *self.replicas)}:
            raise ConfigurationError(f"the router already has an engine named {name}")
        if not 0 <= weight < float("inf"):
            raise ConfigurationError("a replica's weight must be a number >= 0")
        join(
            self.topology, engine, self._hooks, name=name, weight=weight,
            health=self.health, observability=self.observability,
        )  # fmt: skip
        if self._started and not self._monitor.running:
            self._monitor.start()
        return name

    async def remove_replica(self, name: str, *, drain_timeout: float = 30.0) -> None:
        """Remove a replica: no new transactions, open ones finish, pool disposed.

        Transactions still on it after ``drain_timeout`` seconds keep their
        connections until they end; the pool closes them as they come back.
        """
        engine = self.topology.named(name)
        if engine is None:
            raise ConfigurationError(f"the router has no replica named {name!r}")
        await drain(self.topology, engine, seconds=drain_timeout)

    async def start(self) -> None:
        """Start the background health and lag monitor (idempotent).

        After ``dispose()``, this makes the router usable again.
        """
        if self.topology.closed:
            self._install_hooks()
            self.topology.closed = False
        self._started = True
        if self.replicas:
            await self._monitor.poll_once()  # status is filled before first use
            self._monitor.start()

    async def poll(self) -> None:
        """Check every replica's health and lag now, as the monitor does each round."""
        await self._monitor.poll_once()

    async def stop(self) -> None:
        """Stop the monitor; the engines stay usable."""
        self._started = False
        await self._monitor.stop()

    async def dispose(self) -> None:
        """Stop the monitor, close every pool, remove the hooks this router added."""
        self.topology.closed = True
        await self.stop()
        if self._detector is not None:
            self._detector.close()
            self._detector = None
        try:
            await asyncio.gather(
                *(engine.dispose() for engine in (self.writer, *self.replicas))
            )
        finally:
            self._hooks.remove()

    async def __aenter__(self) -> Router:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.dispose()

    def __repr__(self) -> str:
        replicas = ", ".join(repr(safe_url(r.url)) for r in self.replicas)
        return f"Router(writer={safe_url(self.writer.url)!r}, replicas=[{replicas}])"

    __str__ = __repr__


# Everything Router() takes besides its engines, read from its signature.
ROUTER_OPTIONS = frozenset(
    name
    for name, parameter in inspect.signature(Router.__init__).parameters.items()
    if parameter.kind is inspect.Parameter.KEYWORD_ONLY
) - {"writer", "replicas"}
