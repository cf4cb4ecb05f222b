"""What both faces of a router share: engines, options, hooks, status.

``Router`` (asyncio) and ``SyncRouter`` (threads) differ only in how their
engines are made and how the monitor runs; everything else is here, once.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Self, TypeVar, cast

from sqlalchemy.engine import URL, Engine
from sqlalchemy.ext.asyncio import AsyncEngine

from .._backends.positions import has_positions
from .._backends.registry import backend_for
from .._causal.store import CausalStore, SharedFloors
from .._decide.decision import DefaultRole, check_default_role
from .._decide.misuse import OPENINGS
from .._engines.hooks import Hooks
from .._engines.make import check_url, core, safe_url
from .._engines.setup import install_commit_recorder, install_writer_hooks
from .._events import RoutingListener
from .._exceptions import ConfigurationError
from .._monitor.rounds import Rounds
from .._options import (
    OPTIONS,
    ROUTER_KEYWORDS,
    ConsistencyOptions,
    HealthOptions,
    ObservabilityOptions,
    check_balancing,
    default,
    options_group,
)
from .._replicas.policies import BalancingPolicy, make_policy
from .._replicas.replica_set import ReplicaSet
from .._retry import RetryPolicy
from .._topology.discovery import Discovery
from .._topology.patroni import check_rest_urls
from .._topology.topology import Topology
from .build import (
    EngineMaker,
    cluster_engines,
    engine_names,
    engine_names_of,
    idle_check,
    writer_reader,
)
from .check import Seen, ServerProblem, StartupCheck, check_startup_mode, react
from .membership import Members
from .starvation import StarvationDetector
from .status import status_rows
from .wiring import hook_engine, hook_replica

if TYPE_CHECKING:
    from .._settings import RoutingSettings

__all__ = ["RouterBase", "split_options"]

logger = logging.getLogger("routing_db")


E = TypeVar("E", AsyncEngine, Engine)


class RouterBase(Generic[E]):
    """A writer, zero or more replicas, and how reads are spread over them."""

    # Which face: engines made with create_engine (True) or create_async_engine.
    _sync: ClassVar[bool] = False
    _discovery_class: ClassVar[type[Discovery]]
    # The face's monitor: an asyncio task's rounds, or a thread's.
    _monitor_class: ClassVar[type[Rounds]]
    writer: E
    """The writer's engine (``AsyncEngine`` on ``Router``, ``Engine`` on
    ``SyncRouter``): every routing session's bind, and yours for work that
    must not be routed."""
    _monitor: Any
    _detector: StarvationDetector | None

    def __init__(
        self,
        *,
        writer: E,
        replicas: Sequence[E] = (),
        default_role: DefaultRole = default("default_role"),
        fallback_to_writer: bool = default("fallback_to_writer"),
        policy: str | BalancingPolicy = default("policy"),
        weights: Sequence[float] | None = default("weights"),
        max_writer_fallbacks: int | None = default("max_writer_fallbacks"),
        writer_read_weight: float = default("writer_read_weight"),
        retry: RetryPolicy | None = default("retry"),
        health: HealthOptions | None = None,
        consistency: ConsistencyOptions | None = None,
        observability: ObservabilityOptions | None = None,
        # Each field of the three groups may be given by name instead:
        require_standby: bool = default("require_standby"),
        max_lag_bytes: int | None = default("max_lag_bytes"),
        max_lag_seconds: float | None = default("max_lag_seconds"),
        monitor_interval: float = default("monitor_interval"),
        eject_after: int = default("eject_after"),
        eject_window: float = default("eject_window"),
        ping_after_idle: float | None = default("ping_after_idle"),
        writer_wait_timeout: float = default("writer_wait_timeout"),
        connect_timeout: float | None = default("connect_timeout"),
        replica_read_timeout: float | None = default("replica_read_timeout"),
        sticky_seconds: float = default("sticky_seconds"),
        causal_wait_timeout: float | None = default("causal_wait_timeout"),
        causal_store: CausalStore | None = default("causal_store"),
        slow_query_seconds: float | None = default("slow_query_seconds"),
        log_slow_parameters: bool = default("log_slow_parameters"),
        hold_warning_seconds: float | None = default("hold_warning_seconds"),
        checkout_wait_warning: float | None = default("checkout_wait_warning"),
        startup_check: StartupCheck = default("startup_check"),
    ) -> None:
        names = engine_names_of(writer, replicas, sync=self._sync)
        check_default_role(default_role)
        check_startup_mode(startup_check)
        check_balancing(
            weights=weights,
            replicas=len(replicas),
            max_writer_fallbacks=max_writer_fallbacks,
            writer_read_weight=writer_read_weight,
        )
        # Each group takes its own fields from the keywords given by name.
        given = locals()
        by_name = {
            option.name: given[option.name]
            for option in OPTIONS
            if option.keyword and option.group != "router"
        }
        self.health = options_group(HealthOptions, health, by_name)
        self.consistency = options_group(ConsistencyOptions, consistency, by_name)
        self.observability = options_group(ObservabilityOptions, observability, by_name)
        self.writer = writer
        replicas = tuple(replicas)
        self.default_role: DefaultRole = default_role
        self.fallback_to_writer = fallback_to_writer
        self.startup_check: StartupCheck = startup_check
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
        return self._monitor_class(
            self.topology,
            interval=self.health.monitor_interval,
            check_timeout=self.health.check_timeout,
            after_round=self._after_round,
        )

    def _reopen(self) -> bool:
        """``start()``'s first step: after ``dispose()``, usable again. True
        when the router was not started (the start-up check is due)."""
        if self.topology.closed:
            self._install_hooks()
            self.topology.closed = False
            OPENINGS.opened(self._urls)
        starting, self._started = not self._started, True
        return starting

    def _checked(self, problems: list[ServerProblem]) -> None:
        """The start-up check's verdict: ``strict`` refuses to start (the
        router stays unstarted), ``warn`` logs."""
        try:
            react(problems, self.startup_check, sync=self._sync)
        except ConfigurationError:
            self._started = False
            raise

    def _to_check(self) -> list[tuple[Seen, E]]:
        """What ``check()`` asks, of which engine: the writer, then each
        replica that replicates (a SQLite replica is the writer's file)."""
        plan = []
        for name, engine in self.topology.engines():
            role = "writer" if engine is self.writer else "replica"
            backend = backend_for(engine.dialect.name)
            if role == "replica" and (backend is None or not backend.replicates):
                continue
            seen = Seen(name, role)
            # An ejected replica's connections are refused until its probe
            # is due: its last failure says more than that refusal.
            cause = self.topology.replica_set.ejected_because(core(engine))
            if cause is not None:
                seen.error = f"ejected after a connection failure: {cause}"
            plan.append((seen, cast(E, engine)))
        return plan

    def _secrets(self) -> list[str | None]:
        """The passwords a check's message must not show."""
        return [core(engine).url.password for _, engine in self.topology.engines()]

    def _stopping(self) -> None:
        """``stop()``'s first step: reads probe ejected replicas themselves."""
        self._started = False
        self.topology.replica_set.half_open = True

    def _closing(self) -> None:
        """``dispose()``'s first step: no new sessions, no starvation scans."""
        if not self.topology.closed:
            OPENINGS.closed(self._urls)
            if self.topology.listeners:
                self.topology.listeners.emit("disposed")
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
        # Read-your-writes whichever session class (or none) wrote.
        install_commit_recorder(self.writer, hooks, self.topology.record_commit)
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
    ) -> Self:
        """Create the engines; ``engine_kwargs`` go to every engine made.

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
        options = split_options(router_options, engine_kwargs)
        writer_u = check_url(writer_url, field="writer_url", sync=cls._sync)
        replica_us = [
            check_url(url, field=f"replica_urls[{i}]", sync=cls._sync)
            for i, url in enumerate(replica_urls)
        ]
        make_writer = EngineMaker(
            engine_kwargs, writer_kwargs, pgbouncer, sync=cls._sync
        )
        make_replica = EngineMaker(
            engine_kwargs, replica_kwargs, pgbouncer, sync=cls._sync
        )
        router = cls(
            writer=make_writer(writer_u, "writer_url", names[0]),
            replicas=[
                make_replica(url, f"replica_urls[{i}]", names[i + 1])
                for i, url in enumerate(replica_us)
            ],
            **options,
        )
        router._members.make_engine = make_replica
        return router

    @classmethod
    def from_cluster(
        cls,
        urls: Sequence[str | URL],
        *,
        writer_kwargs: Mapping[str, Any] | None = None,
        replica_kwargs: Mapping[str, Any] | None = None,
        router_options: Mapping[str, Any] | None = None,
        pgbouncer: bool = False,
        names: Sequence[str] | None = None,
        patroni: Sequence[str] | None = None,
        **engine_kwargs: Any,
    ) -> Self:
        """Every URL is a node of one replication cluster: the writer is the
        node that takes writes, found and followed by asking every node.

        ``patroni``: the members' Patroni REST API URLs
        (``http://host:8008``). Then the writer is the node Patroni holds as
        leader (and that takes writes): a leader whose lease is gone is
        fenced at once, whatever its backends answer, and members Patroni
        lists as not following the current timeline serve no reads. Nodes
        are matched to members by host and port (else by name).

        Keywords as in ``from_urls``: ``writer_kwargs`` go to the writer's pool
        (its connections go to whichever node is the primary), ``replica_kwargs``
        to each node's pool for reads. ``names`` label the nodes in metrics,
        logs and ``status()`` instead of ``host:port/db``; the writer's pool
        is labelled ``writer``.
        """
        if isinstance(urls, str | URL) or not urls:
            raise ConfigurationError("cluster_urls must be a non-empty list of URLs")
        rest = None if patroni is None else check_rest_urls(patroni)
        options = split_options(router_options, engine_kwargs)
        if options.get("writer_read_weight"):
            raise ConfigurationError(
                "writer_read_weight is not supported with from_cluster"
            )
        checked = [
            check_url(url, field=f"cluster_urls[{i}]", sync=cls._sync)
            for i, url in enumerate(urls)
        ]
        sync = cls._sync
        writer, nodes, make_probe = cluster_engines(
            checked,
            names=engine_names(None, names, len(urls))[1:],
            make_writer=EngineMaker(engine_kwargs, writer_kwargs, pgbouncer, sync),
            make_reader=EngineMaker(engine_kwargs, replica_kwargs, pgbouncer, sync),
        )
        # Engines of this face (cls._sync), which the types cannot tell.
        readers: list[Any] = [node.reader for node in nodes]
        router = cls(writer=cast(Any, writer), replicas=readers, **options)
        topology = router.topology
        topology.discovery = cls._discovery_class(
            topology,
            nodes,
            bound=router.health.check_timeout,
            make_probe=make_probe,
            connect_timeout=router.health.connect_timeout,
            patroni=rest,
            give_up_after=router.health.writer_wait_timeout,
        )
        topology.replica_set.cluster = True
        topology.writer_ok = False  # not known until the nodes are asked
        topology.discovery.install(router._hooks)
        router._members.make_engine = EngineMaker(
            engine_kwargs, replica_kwargs, pgbouncer, sync
        )
        return router

    @classmethod
    def from_settings(cls, settings: RoutingSettings | None = None) -> Self:
        """Build a router from ``RoutingSettings`` (``SyncRoutingSettings`` for
        ``SyncRouter``); ``None`` reads the environment."""
        # Imported here so the core never needs pydantic-settings at import time.
        from .._settings import RoutingSettings, SyncRoutingSettings

        if settings is None:
            settings = SyncRoutingSettings() if cls._sync else RoutingSettings()
        if settings.cluster_urls:
            return cls.from_cluster(**settings.router_kwargs())
        return cls.from_urls(**settings.router_kwargs())


def split_options(
    given: Mapping[str, Any] | None,
    engine_kwargs: dict[str, Any],
) -> dict[str, Any]:
    """Router options from ``given`` and those among ``engine_kwargs`` (moved)."""
    options = dict(given or {})
    for name in ROUTER_KEYWORDS.intersection(engine_kwargs):
        options[name] = engine_kwargs.pop(name)
    idle_check(engine_kwargs, options)
    return options
