"""``Topology``: the engines a router routes between, and their shared live state.

The one interface routing_db's own modules use to reach a router's engines:
sessions route and report through it, the monitor and the starvation detector
read it. Only ``Router`` builds it. Engines are held both as the caller's
``AsyncEngine`` and as the ``Engine`` that ``Session.get_bind`` returns.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING

from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncEngine

from ._events import Listeners
from ._replicas import ReplicaSet

if TYPE_CHECKING:
    from ._discovery import Discovery

__all__ = ["Topology"]

logger = logging.getLogger("routing_db")


class Topology:
    """The writer, the replicas, their names, health and routing listeners."""

    def __init__(
        self,
        *,
        writer: AsyncEngine,
        replicas: tuple[AsyncEngine, ...],
        names: dict[AsyncEngine, str],
        writer_reader: AsyncEngine | None,
        replica_set: ReplicaSet,
        max_writer_fallbacks: int | None,
    ) -> None:
        self.async_writer = writer
        self.async_replicas = replicas
        self.writer: Engine = writer.sync_engine
        # The writer's pool as one more reader (READ ONLY transactions).
        self.writer_reader: Engine | None = (
            writer_reader.sync_engine if writer_reader is not None else None
        )
        self.replica_set = replica_set
        self.listeners = Listeners()
        replica_set.listeners = self.listeners
        self._names = dict(names)
        self._by_sync: dict[Engine, AsyncEngine] = {
            engine.sync_engine: engine for engine in (writer, *replicas)
        }
        self._sync_names = {e.sync_engine: n for e, n in names.items()}
        if writer_reader is not None:
            self._by_sync[writer_reader.sync_engine] = writer_reader
            self._sync_names[writer_reader.sync_engine] = names[writer]
        self.closed = False  # the router was disposed: no new sessions
        # The writer's server was last seen taking writes. False once it
        # refused a write as read-only and was found not to be the primary
        # (or the monitor found it so): writes wait for it to be one again.
        self.writer_ok = True
        # from_cluster: who the writer is, found by asking every node.
        self.discovery: Discovery | None = None
        self._max_fallbacks = max_writer_fallbacks
        self._fallbacks = 0  # transactions reading on the writer now
        self.fallbacks_total = 0

    def add_replica(self, engine: AsyncEngine, name: str) -> None:
        """Know ``engine`` as one more replica, called ``name``."""
        self.async_replicas = (*self.async_replicas, engine)
        self._names[engine] = name
        self._by_sync[engine.sync_engine] = engine
        self._sync_names[engine.sync_engine] = name

    def remove_replica(self, engine: AsyncEngine) -> None:
        """No longer list a replica that was drained.

        Its name is kept: a transaction still on it reports under that name.
        """
        self.async_replicas = tuple(e for e in self.async_replicas if e is not engine)

    def named(self, name: str) -> AsyncEngine | None:
        """The replica listed under ``name``, if any."""
        for engine in self.async_replicas:
            if self._names[engine] == name:
                return engine
        return None

    def engines(self) -> Iterator[tuple[str, AsyncEngine]]:
        """``(name, engine)`` of the writer, then of each replica."""
        for engine in (self.async_writer, *self.async_replicas):
            yield self._names[engine], engine

    def name(self, engine: Engine | AsyncEngine) -> str:
        """The label of one of these engines in metrics, logs and ``status()``."""
        if isinstance(engine, AsyncEngine):
            return self._names[engine]
        return self._sync_names[engine]

    def to_async(self, engine: Engine) -> AsyncEngine | None:
        """The ``AsyncEngine`` of one of these engines' ``sync_engine``."""
        return self._by_sync.get(engine)

    def is_writer(self, engine: Engine) -> bool:
        """Does ``engine`` run on the writer (as itself or as a reader)?"""
        return engine is self.writer or engine is self.writer_reader

    def writer_lost(self, name: str | None = None, *, quiet: bool = False) -> None:
        """The writer's server (node ``name``) was found not taking writes."""
        if self.writer_ok:
            self.writer_ok = False
            self.replica_set.forget_positions()
            if quiet:
                return
            name = name or self._names[self.async_writer]
            self.listeners.emit("role_changed", name, "writer", "unknown")
            logger.error(
                "routing_db: the writer %s does not take writes (not the primary "
                "any more, or gone): writes wait for a primary (writer_wait_timeout)",
                name,
            )

    def writer_found(self, name: str | None = None, *, quiet: bool = False) -> None:
        """The writer's server (node ``name``) takes writes (again)."""
        if not self.writer_ok:
            self.writer_ok = True
            if quiet:
                return
            name = name or self._names[self.async_writer]
            self.listeners.emit("role_changed", name, "unknown", "writer")
            logger.warning("routing_db: the writer %s takes writes again", name)

    def acquire_fallback(self) -> bool:
        """Take a ``max_writer_fallbacks`` slot for a read; False if none is free."""
        cap = self._max_fallbacks
        if cap is not None and self._fallbacks >= cap:
            return False
        self._fallbacks += 1
        self.fallbacks_total += 1
        return True

    def release_fallback(self) -> None:
        """Give back a slot taken by ``acquire_fallback``."""
        self._fallbacks -= 1

    @property
    def fallbacks(self) -> int:
        """Transactions reading on the writer for want of a replica, now."""
        return self._fallbacks
