"""``SyncRouter``: the router over sync engines; its monitor is a daemon thread."""

from __future__ import annotations

from typing import ClassVar

from sqlalchemy.engine import Engine

from .._engines.make import core
from .._monitor.thread_monitor import ThreadMonitor
from .._topology.discovery import ThreadDiscovery
from .base import RouterBase
from .check import ServerProblem, failed, judge, look

__all__ = ["SyncRouter"]


class SyncRouter(RouterBase[Engine]):
    """``Router`` for sync code: ``Engine``s from ``create_engine``, the same rules."""

    _sync: ClassVar[bool] = True

    _monitor: ThreadMonitor
    _discovery_class = ThreadDiscovery
    _monitor_class = ThreadMonitor

    def check(self) -> list[ServerProblem]:
        """Reach each server once through its engine, as the router will: what
        is wrong (an empty list: nothing), for a readiness probe."""
        plan = self._to_check()
        secrets = self._secrets()
        for seen, engine in plan:
            if seen.error is not None:
                continue
            try:
                with engine.connect() as connection:
                    look(connection, seen)
            except Exception as exc:
                failed(seen, exc, secrets)
        return judge([seen for seen, _ in plan])

    def start(self) -> None:
        """Start the background health and lag monitor thread (idempotent).

        After ``dispose()``, this makes the router usable again.
        """
        if self._reopen() and self.startup_check != "off":
            self._checked(self.check())
        if self.replicas:
            self._monitor.poll_once()  # status is filled before first use
            self._monitor.start()
            self.topology.replica_set.half_open = False  # the monitor probes

    def poll(self) -> None:
        """Check every replica's health and lag now, as the monitor does each round."""
        self._monitor.poll_once()

    def stop(self) -> None:
        """Stop the monitor thread; the engines stay usable."""
        self._stopping()
        self._monitor.stop()

    def remove_replica(self, name: str, *, drain_timeout: float = 30.0) -> None:
        """Remove a replica: no new transactions, open ones finish, pool disposed.

        Transactions still on it after ``drain_timeout`` seconds are cut: their
        next statement (or one running then) fails as a lost connection.
        """
        self._members.remove_replica_now(name, drain_timeout)

    def remove_node(self, name: str, *, drain_timeout: float = 30.0) -> None:
        """Remove a node of a ``from_cluster`` router, as ``remove_replica`` does.

        The writer's node cannot be removed: fail over first.
        """
        self._members.remove_node_now(name, drain_timeout)

    def dispose(self) -> None:
        """Stop the monitor, close every pool, remove the hooks this router added."""
        self._closing()
        self.stop()
        discovery = self.topology.discovery
        probes = [] if discovery is None else [node.probe for node in discovery.nodes]
        try:
            for engine in (self.writer, *self.replicas, *probes):
                core(engine).dispose()
        finally:
            self._hooks.remove()

    def __enter__(self) -> SyncRouter:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.dispose()
