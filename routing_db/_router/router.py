"""``Router``: the asyncio face; its monitor is a task on the event loop."""

from __future__ import annotations

import asyncio

from sqlalchemy.ext.asyncio import AsyncEngine

from .._engines.make import dispose
from .._monitor.async_monitor import Monitor
from .._topology.discovery import AsyncDiscovery
from .base import RouterBase
from .check import Seen, ServerProblem, failed, judge, look

__all__ = ["Router"]


class Router(RouterBase[AsyncEngine]):
    """Owns one writer and zero or more replica engines and picks replicas."""

    _monitor: Monitor
    _discovery_class = AsyncDiscovery
    _monitor_class = Monitor

    async def remove_replica(self, name: str, *, drain_timeout: float = 30.0) -> None:
        """Remove a replica: no new transactions, open ones finish, pool disposed.

        Transactions still on it after ``drain_timeout`` seconds are cut: their
        next statement (or one running then) fails as a lost connection.
        """
        await self._members.remove_replica(name, drain_timeout)

    async def remove_node(self, name: str, *, drain_timeout: float = 30.0) -> None:
        """Remove a node of a ``from_cluster`` router, as ``remove_replica`` does.

        The writer's node cannot be removed: fail over first.
        """
        await self._members.remove_node(name, drain_timeout)

    async def start(self) -> None:
        """Start the background health and lag monitor (idempotent).

        After ``dispose()``, this makes the router usable again.
        """
        if self._reopen() and self.startup_check != "off":
            self._checked(await self.check())
        if self.replicas:
            await self._monitor.poll_once()  # status is filled before first use
            self._monitor.start()
            self.topology.replica_set.half_open = False  # the monitor probes

    async def check(self) -> list[ServerProblem]:
        """Reach each server once through its engine, as the router will: what
        is wrong (an empty list: nothing), for a readiness probe."""
        plan = self._to_check()
        secrets = self._secrets()

        async def ask(seen: Seen, engine: AsyncEngine) -> None:
            try:
                async with engine.connect() as connection:
                    await connection.run_sync(look, seen)
            except Exception as exc:
                failed(seen, exc, secrets)

        await asyncio.gather(
            *(ask(seen, engine) for seen, engine in plan if seen.error is None)
        )
        return judge([seen for seen, _ in plan])

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
                *(dispose(e) for e in (self.writer, *self.replicas, *probes))
            )
        finally:
            self._hooks.remove()

    async def __aenter__(self) -> Router:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.dispose()
