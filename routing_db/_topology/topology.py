"""``Topology``: the engines a router routes between, and their shared live state.

The one interface routing_db's own modules use to reach a router's engines:
sessions route and report through it, the monitor and the starvation detector
read it. Only a router builds it. Engines are held both as the application
holds them (an ``AsyncEngine`` for ``Router``, an ``Engine`` for
``SyncRouter``: the "app" engine) and as the ``Engine`` that
``Session.get_bind`` returns and everything inside routing works with.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING

from sqlalchemy.engine import Engine
from sqlalchemy.pool import PoolProxiedConnection

from .._backends.positions import has_positions, writer_position_after_commit
from .._causal.floor import FLOOR, record_write
from .._causal.store import CAUSAL_KEY
from .._engines.make import AppEngine, core
from .._events import Listeners
from .._replicas.replica_set import ReplicaSet

if TYPE_CHECKING:
    from .._causal.store import SharedFloors
    from .discovery import Discovery

__all__ = ["Topology"]

logger = logging.getLogger("routing_db")


class Topology:
    """The writer, the replicas, their names, health and routing listeners."""

    def __init__(
        self,
        *,
        writer: AppEngine,
        replicas: tuple[AppEngine, ...],
        names: dict[AppEngine, str],
        writer_reader: AppEngine | None,
        replica_set: ReplicaSet,
        max_writer_fallbacks: int | None,
        shared: SharedFloors | None = None,
    ) -> None:
        self.app_writer = writer
        self.app_replicas = replicas
        self.writer: Engine = core(writer)
        # The writer's pool as one more reader (READ ONLY transactions).
        self.writer_reader: Engine | None = (
            core(writer_reader) if writer_reader is not None else None
        )
        self.replica_set = replica_set
        # Positions per application key, shared with other processes.
        self.shared = shared
        self.listeners = Listeners()
        replica_set.listeners = self.listeners
        self._names = dict(names)
        self._by_sync: dict[Engine, AppEngine] = {
            core(engine): engine for engine in (writer, *replicas)
        }
        self._sync_names = {core(e): n for e, n in names.items()}
        if writer_reader is not None:
            self._by_sync[core(writer_reader)] = writer_reader
            self._sync_names[core(writer_reader)] = names[writer]
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

    def record_commit(self, proxied: PoolProxiedConnection) -> None:
        """Raise this context's floor to the position of the COMMIT that
        ``proxied``, a writer connection, has just made (and tell the shared
        store): its reads see it, wherever they go."""
        if not self.app_replicas:
            return  # every read is the writer's
        dialect = self.writer.dialect.name
        try:
            position = writer_position_after_commit(proxied, dialect)
        except Exception as exc:
            # The commit succeeded; without its position, the context stays
            # on the writer until it is known again (see below).
            logger.debug("no replication position after commit: %r", exc)
            position = None
        if position is None:
            # Where positions exist, the context stays on the writer until its
            # position is known again; elsewhere the time window (sticky_seconds).
            record_write(lsn=None, unsure=has_positions(dialect))
            cluster = None
        else:
            lsn, server, cluster = position
            record_write(lsn=lsn, server=server, cluster=cluster)
        key = CAUSAL_KEY.get()
        floor = FLOOR.get()
        if self.shared is not None and key is not None and floor is not None:
            self.shared.wrote(key, floor, cluster)

    def add_replica(self, engine: AppEngine, name: str) -> None:
        """Know ``engine`` as one more replica, called ``name``."""
        self.app_replicas = (*self.app_replicas, engine)
        self._names[engine] = name
        self._by_sync[core(engine)] = engine
        self._sync_names[core(engine)] = name

    def remove_replica(self, engine: AppEngine) -> None:
        """No longer list a replica that was drained.

        Its name is kept: a transaction still on it reports under that name.
        """
        self.app_replicas = tuple(e for e in self.app_replicas if e is not engine)

    def named(self, name: str) -> AppEngine | None:
        """The replica listed under ``name``, if any."""
        for engine in self.app_replicas:
            if self._names[engine] == name:
                return engine
        return None

    def engines(self) -> Iterator[tuple[str, AppEngine]]:
        """``(name, engine)`` of the writer, then of each replica."""
        for engine in (self.app_writer, *self.app_replicas):
            yield self._names[engine], engine

    def replica_engines(self) -> list[Engine]:
        """Each replica's ``Engine``, in order."""
        return [core(engine) for engine in self.app_replicas]

    def name(self, engine: AppEngine) -> str:
        """The label of one of these engines in metrics, logs and ``status()``."""
        return self._sync_names[core(engine)]

    def app_engine(self, engine: Engine) -> AppEngine | None:
        """One of these engines as the application holds it (None: not one)."""
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
            name = name or self._names[self.app_writer]
            self.listeners.emit("role_changed", name, "writer", "unknown")
            logger.error(
                "the writer %s does not take writes (not the primary "
                "any more, or gone): writes wait for a primary (writer_wait_timeout)",
                name,
            )

    def writer_found(self, name: str | None = None, *, quiet: bool = False) -> None:
        """The writer's server (node ``name``) takes writes (again)."""
        if not self.writer_ok:
            self.writer_ok = True
            if quiet:
                return
            name = name or self._names[self.app_writer]
            self.listeners.emit("role_changed", name, "unknown", "writer")
            logger.warning("the writer %s takes writes again", name)

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
