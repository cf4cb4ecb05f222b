"""``Router``: the asyncio face; its monitor is a task on the event loop."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any

from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine

from ._build import EngineMaker, cluster_engines, engine_names
from ._discovery import Discovery
from ._engines import check_url
from ._exceptions import ConfigurationError
from ._monitor import Monitor
from ._router_base import (
    DEFAULT_PING_AFTER_IDLE,
    ROUTER_OPTIONS,
    RouterBase,
    split_options,
)

__all__ = ["DEFAULT_PING_AFTER_IDLE", "ROUTER_OPTIONS", "Router"]


class Router(RouterBase[AsyncEngine]):
    """Owns one writer and zero or more replica engines and picks replicas."""

    _monitor: Monitor

    def _make_monitor(self) -> Monitor:
        return Monitor(
            self.topology,
            interval=self.health.monitor_interval,
            check_timeout=self.health.check_timeout,
            after_round=self._after_round,
        )

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
        **engine_kwargs: Any,
    ) -> Router:
        """Every URL is a node of one replication cluster: the writer is the
        node that takes writes, found and followed by asking every node.

        Keywords as in ``from_urls``: ``writer_kwargs`` go to the writer's pool
        (its connections go to whichever node is the primary), ``replica_kwargs``
        to each node's pool for reads. ``names`` label the nodes in metrics,
        logs and ``status()`` instead of ``host:port/db``; the writer's pool
        is labelled ``writer``.
        """
        if isinstance(urls, str | URL) or not urls:
            raise ConfigurationError("cluster_urls must be a non-empty list of URLs")
        options = split_options(router_options, engine_kwargs)
        if options.get("writer_read_weight"):
            raise ConfigurationError(
                "writer_read_weight is not supported with from_cluster"
            )
        checked = [
            check_url(url, field=f"cluster_urls[{i}]") for i, url in enumerate(urls)
        ]
        writer, nodes, make_probe = cluster_engines(
            checked,
            names=engine_names(None, names, len(urls))[1:],
            make_writer=EngineMaker(engine_kwargs, writer_kwargs, pgbouncer),
            make_reader=EngineMaker(engine_kwargs, replica_kwargs, pgbouncer),
        )
        readers = [node.reader for node in nodes]
        router = cls(writer=writer, replicas=readers, **options)  # type: ignore[arg-type]
        topology = router.topology
        topology.discovery = Discovery(
            topology,
            nodes,
            bound=router.health.check_timeout,
            make_probe=make_probe,
            connect_timeout=router.health.connect_timeout,
        )
        topology.replica_set.cluster = True
        topology.writer_ok = False  # not known until the nodes are asked
        topology.discovery.install(router._hooks)
        router._members.make_engine = EngineMaker(
            engine_kwargs, replica_kwargs, pgbouncer
        )
        return router

    async def remove_replica(self, name: str, *, drain_timeout: float = 30.0) -> None:
        """Remove a replica: no new transactions, open ones finish, pool disposed.

        Transactions still on it after ``drain_timeout`` seconds are cut: their
        next statement (or one running then) fails as a lost connection.
        """
        await self._members.remove_replica(name, drain_timeout)

    def add_node(
        self, url: str | URL, *, name: str | None = None, weight: float = 1.0
    ) -> str:
        """Add a node to a ``from_cluster`` router at runtime; return its name.

        The monitor asks its role in its next round; a standby serves reads
        from then on.
        """
        return self._members.add_node(url, name, weight)

    async def remove_node(self, name: str, *, drain_timeout: float = 30.0) -> None:
        """Remove a node of a ``from_cluster`` router, as ``remove_replica`` does.

        The writer's node cannot be removed: fail over first.
        """
        await self._members.remove_node(name, drain_timeout)

    async def start(self) -> None:
        """Start the background health and lag monitor (idempotent).

        After ``dispose()``, this makes the router usable again.
        """
        self._reopen()
        if self.replicas:
            await self._monitor.poll_once()  # status is filled before first use
            self._monitor.start()
            self.topology.replica_set.half_open = False  # the monitor probes

    async def poll(self) -> None:
        """Check every replica's health and lag now, as the monitor does each round."""
        await self._monitor.poll_once()

    async def stop(self) -> None:
        """Stop the monitor; the engines stay usable."""
        self._stopping()
        await self._monitor.stop()

    async def dispose(self) -> None:
        """Stop the monitor, close every pool, remove the hooks this router added."""
        self._closing()
        await self.stop()
        discovery = self.topology.discovery
        probes = [] if discovery is None else [node.probe for node in discovery.nodes]
        try:
            await asyncio.gather(
                *(e.dispose() for e in (self.writer, *self.replicas, *probes))
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
