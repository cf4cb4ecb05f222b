"""How a router is built: from URLs, from a cluster's nodes, from settings.

A mixin of ``RouterBase``: the constructors make the engines, then the
router, then hand the router what it needs to make more engines at runtime.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Self

from sqlalchemy.engine import URL

from ._build import EngineMaker, cluster_engines, engine_names, idle_check
from ._discovery import Discovery
from ._exceptions import ConfigurationError
from ._make import check_url
from ._patroni import check_rest_urls

if TYPE_CHECKING:
    from ._hooks import Hooks
    from ._membership import Members
    from ._options import HealthOptions
    from ._settings import RoutingSettings
    from ._topology import Topology

__all__ = ["Constructors", "router_options", "split_options"]


class Constructors:
    """``from_urls``, ``from_cluster`` and ``from_settings`` of both routers."""

    # Which face: engines made with create_engine (True) or create_async_engine.
    _sync: ClassVar[bool] = False
    _discovery_class: ClassVar[type[Discovery]]
    if TYPE_CHECKING:
        topology: Topology
        health: HealthOptions
        _hooks: Hooks
        _members: Members

        def __init__(
            self, *, writer: Any, replicas: Sequence[Any] = (), **options: Any
        ) -> None: ...

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
        options = split_options(cls, router_options, engine_kwargs)
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
        options = split_options(cls, router_options, engine_kwargs)
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
        readers = [node.reader for node in nodes]
        router = cls(writer=writer, replicas=readers, **options)
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
        from ._settings import RoutingSettings, SyncRoutingSettings

        if settings is None:
            settings = SyncRoutingSettings() if cls._sync else RoutingSettings()
        if settings.cluster_urls:
            return cls.from_cluster(**settings.router_kwargs())
        return cls.from_urls(**settings.router_kwargs())


def router_options(router: type[Constructors]) -> frozenset[str]:
    """Everything ``router()`` takes besides its engines, read from its signature."""
    return frozenset(
        name
        for name, parameter in inspect.signature(router.__init__).parameters.items()
        if parameter.kind is inspect.Parameter.KEYWORD_ONLY
    ) - {"writer", "replicas"}


def split_options(
    router: type[Constructors],
    given: Mapping[str, Any] | None,
    engine_kwargs: dict[str, Any],
) -> dict[str, Any]:
    """Router options from ``given`` and those among ``engine_kwargs`` (moved)."""
    options = dict(given or {})
    for name in router_options(router).intersection(engine_kwargs):
        options[name] = engine_kwargs.pop(name)
    idle_check(engine_kwargs, options)
    return options
