"""Replicas (and a cluster's nodes) joining and leaving a running router."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import URL
from sqlalchemy.util import greenlet_spawn

from .._backends.connections import cut, driver_of
from .._compat import pause
from .._engines.hooks import Hooks
from .._engines.make import AppEngine, check_url, core, dispose, engine_name
from .._exceptions import ConfigurationError
from .._options import HealthOptions, ObservabilityOptions
from .._topology.discovery import Discovery
from .._topology.topology import Topology
from .build import EngineMaker
from .wiring import hook_replica

__all__ = ["Members", "drain", "join"]

logger = logging.getLogger("routing_db")


def join(
    topology: Topology,
    engine: AppEngine,
    hooks: Hooks,
    *,
    name: str,
    weight: float,
    health: HealthOptions,
    observability: ObservabilityOptions,
) -> None:
    """Add ``engine`` as a replica; it serves once found a standby."""
    topology.add_replica(engine, name)
    topology.replica_set.add(core(engine), name=name, weight=weight, hooks=hooks)
    hook_replica(
        engine, hooks, name=name, health=health, observability=observability,
        replica_set=topology.replica_set,
    )  # fmt: skip


_POLL = 0.02  # seconds between looks at a draining pool


def drain(
    topology: Topology,
    engine: AppEngine,
    *,
    seconds: float,
    later: Callable[[Callable[[], None]], object] | None,
) -> None:
    """Give ``engine`` no new transactions, let its open ones finish for up to
    ``seconds``, cut those still open, dispose it.

    Sync code for both faces: a ``Router`` runs it in SQLAlchemy's greenlet
    (``pause`` yields to the event loop). ``later(fn)`` runs ``fn`` once the
    event being dispatched is over, to take the listeners off again; with
    ``None`` (threads: another thread may be dispatching) they are left on
    the disposed engine, doing nothing.
    """
    sync = core(engine)
    pool: Any = sync.pool
    topology.replica_set.drain(sync)
    # Connections seen running a statement meanwhile (the pool lists only
    # idle ones), and whether the timeout passed: then each is cut.
    busy: dict[int, Any] = {}
    timed_out = done = False
    # Transactions still open once cut: counted down as they end (a disposed
    # pool's own count means nothing).
    open_after = 0

    def stop_listening() -> None:
        nonlocal done
        done = True
        if later is None:
            return
        for target, name, fn in (
            (sync, "before_cursor_execute", executing),
            (pool, "checkin", checked_in),
            (sync.pool, "checkin", checked_in),  # the pool after dispose()
        ):
            if event.contains(target, name, fn):
                event.remove(target, name, fn)

    def checked_in(dbapi_connection: Any, record: Any) -> None:
        nonlocal open_after
        if done:
            return
        if dbapi_connection is not None:  # None: invalidated
            busy.pop(id(driver_of(dbapi_connection)), None)
        if timed_out:
            open_after -= 1
            if open_after <= 0:  # the last cut transaction ended
                stop_listening() if later is None else later(stop_listening)

    def executing(conn: Any, *args: Any) -> None:
        if done:
            return
        driver = conn.connection.driver_connection
        busy[id(driver)] = driver
        if timed_out:
            cut(driver)  # this statement fails as a lost connection

    event.listen(pool, "checkin", checked_in)
    event.listen(sync, "before_cursor_execute", executing)
    try:
        deadline = time.monotonic() + seconds
        while pool.checkedout() > 0 and time.monotonic() < deadline:
            pause(_POLL)
        if pool.checkedout() > 0:
            timed_out, open_after = True, pool.checkedout()
            for driver in list(busy.values()):
                cut(driver)  # what it waits for fails now
            logger.warning(
                "replica %s removed with %d transactions still open "
                "after drain_timeout (%g s): they are cut (a connection error, "
                "which unit_of_work reruns)",
                topology.name(engine),
                open_after,
                seconds,
            )
    finally:
        # Transactions cut, but not ended yet, keep the listeners until the
        # last of them gives its connection back.
        if not timed_out:
            stop_listening()
    topology.remove_replica(engine)
    topology.replica_set.forget(sync)
    sync.dispose()


class Members:
    """A router's runtime changes of its replica set (``add_replica``...)."""

    def __init__(
        self,
        topology: Topology,
        hooks: Hooks,
        *,
        health: HealthOptions,
        observability: ObservabilityOptions,
        joined: Callable[[], None],
        sync: bool,
    ) -> None:
        self._topology = topology
        self._hooks = hooks
        self._health = health
        self._observability = observability
        self._joined = joined  # the router starts its monitor if it should
        # How a URL becomes an engine (from_urls and from_cluster: as they did).
        self.make_engine = EngineMaker({}, None, pgbouncer=False, sync=sync)

    def add_replica(
        self, replica: str | URL | AppEngine, name: str | None, weight: float
    ) -> str:
        """See ``Router.add_replica``."""
        if self._topology.discovery is not None:
            raise ConfigurationError("a from_cluster router adds nodes: add_node()")
        return self._join(replica, name, weight, field="add_replica")[0]

    def add_node(self, url: str | URL, name: str | None, weight: float) -> str:
        """See ``Router.add_node``."""
        discovery = self._cluster("add_node")
        checked = check_url(url, field="add_node", sync=self.make_engine.sync)
        name, reader = self._join(checked, name, weight, field="add_node")
        discovery.add(name, reader)
        return name

    def _join(
        self,
        replica: str | URL | AppEngine,
        name: str | None,
        weight: float,
        *,
        field: str,
    ) -> tuple[str, AppEngine]:
        topology = self._topology
        if isinstance(replica, AppEngine):
            engine = replica
        else:
            engine = self.make_engine(
                check_url(replica, field=field, sync=self.make_engine.sync), field, name
            )
        name = name or engine_name(engine)
        if name in {name for name, _ in topology.engines()}:
            raise ConfigurationError(f"the router already has an engine named {name}")
        if not 0 <= weight < float("inf"):
            raise ConfigurationError("a replica's weight must be a number >= 0")
        join(
            topology, engine, self._hooks, name=name, weight=weight,
            health=self._health, observability=self._observability,
        )  # fmt: skip
        self._joined()
        return name, engine

    async def remove_replica(self, name: str, drain_timeout: float) -> None:
        """See ``Router.remove_replica``."""
        engine = self._leaving_replica(name)
        loop = asyncio.get_running_loop()
        await greenlet_spawn(
            drain, self._topology, engine, seconds=drain_timeout, later=loop.call_soon
        )

    def remove_replica_now(self, name: str, drain_timeout: float) -> None:
        """See ``SyncRouter.remove_replica``."""
        engine = self._leaving_replica(name)
        drain(self._topology, engine, seconds=drain_timeout, later=None)

    async def remove_node(self, name: str, drain_timeout: float) -> None:
        """See ``Router.remove_node``."""
        engine, probe = self._leaving_node(name)
        loop = asyncio.get_running_loop()
        try:
            await greenlet_spawn(
                drain, self._topology, engine, seconds=drain_timeout,
                later=loop.call_soon,
            )  # fmt: skip
        finally:
            await dispose(probe)

    def remove_node_now(self, name: str, drain_timeout: float) -> None:
        """See ``SyncRouter.remove_node``."""
        engine, probe = self._leaving_node(name)
        try:
            drain(self._topology, engine, seconds=drain_timeout, later=None)
        finally:
            core(probe).dispose()

    def _leaving_replica(self, name: str) -> AppEngine:
        if self._topology.discovery is not None:
            raise ConfigurationError(
                "a from_cluster router removes nodes: remove_node()"
            )
        return self._named(name)

    def _leaving_node(self, name: str) -> tuple[AppEngine, AppEngine]:
        probe = self._cluster("remove_node").remove(name)
        return self._named(name), probe

    def _named(self, name: str) -> AppEngine:
        engine = self._topology.named(name)
        if engine is None:
            raise ConfigurationError(f"the router has no replica named {name!r}")
        return engine

    def _cluster(self, method: str) -> Discovery:
        discovery = self._topology.discovery
        if discovery is None:
            raise ConfigurationError(f"{method}() is for from_cluster routers")
        return discovery
