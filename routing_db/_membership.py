"""Replicas (and a cluster's nodes) joining and leaving a running router."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import URL

from ._build import EngineMaker
from ._connections import cut, driver_of
from ._discovery import Discovery
from ._engines import AppEngine, check_url, core, dispose, engine_name
from ._exceptions import ConfigurationError
from ._hooks import Hooks
from ._options import HealthOptions, ObservabilityOptions
from ._topology import Topology
from ._wiring import hook_replica

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


async def drain(topology: Topology, engine: AppEngine, *, seconds: float) -> None:
    """Give ``engine`` no new transactions, let its open ones finish for up to
    ``seconds``, cut those still open, dispose it."""
    sync = core(engine)
    pool: Any = sync.pool
    topology.replica_set.drain(sync)
    loop = asyncio.get_running_loop()
    drained = asyncio.Event()
    # Connections seen running a statement meanwhile (the pool lists only
    # idle ones), and whether the timeout passed: then each is cut.
    busy: dict[int, Any] = {}
    timed_out = False
    # Transactions still open once cut: counted down as they end (a disposed
    # pool's own count means nothing).
    open_after = 0

    def stop_listening() -> None:
        for target, name, fn in (
            (sync, "before_cursor_execute", executing),
            (pool, "checkin", checked_in),
            (sync.pool, "checkin", checked_in),  # the pool after dispose()
        ):
            if event.contains(target, name, fn):
                event.remove(target, name, fn)

    def check() -> None:
        if not timed_out and pool.checkedout() <= 0:
            drained.set()

    def checked_in(dbapi_connection: Any, record: Any) -> None:
        nonlocal open_after
        if dbapi_connection is not None:  # None: invalidated
            busy.pop(id(driver_of(dbapi_connection)), None)
        if not timed_out:
            loop.call_soon(check)  # once the pool has counted it back
            return
        open_after -= 1
        if open_after <= 0:
            loop.call_soon(stop_listening)  # the last cut transaction ended

    def executing(conn: Any, *args: Any) -> None:
        driver = conn.connection.driver_connection
        busy[id(driver)] = driver
        if timed_out:
            cut(driver)  # this statement fails as a lost connection

    event.listen(pool, "checkin", checked_in)
    event.listen(sync, "before_cursor_execute", executing)
    try:
        check()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(drained.wait(), seconds)
        if pool.checkedout() > 0:
            timed_out, open_after = True, pool.checkedout()
            for driver in list(busy.values()):
                cut(driver)  # what it waits for fails now
            logger.warning(
                "routing_db: replica %s removed with %d transactions still open "
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
    await dispose(engine)


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
    ) -> None:
        self._topology = topology
        self._hooks = hooks
        self._health = health
        self._observability = observability
        self._joined = joined  # the router starts its monitor if it should
        # How a URL becomes an engine (from_urls and from_cluster: as they did).
        self.make_engine = EngineMaker({}, None, pgbouncer=False)

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
        checked = check_url(url, field="add_node")
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
            engine = self.make_engine(check_url(replica, field=field), field, name)
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
        if self._topology.discovery is not None:
            raise ConfigurationError(
                "a from_cluster router removes nodes: remove_node()"
            )
        await self._drain(name, drain_timeout)

    async def remove_node(self, name: str, drain_timeout: float) -> None:
        """See ``Router.remove_node``."""
        probe = self._cluster("remove_node").remove(name)
        try:
            await self._drain(name, drain_timeout)
        finally:
            await dispose(probe)

    async def _drain(self, name: str, drain_timeout: float) -> None:
        engine = self._topology.named(name)
        if engine is None:
            raise ConfigurationError(f"the router has no replica named {name!r}")
        await drain(self._topology, engine, seconds=drain_timeout)

    def _cluster(self, method: str) -> Discovery:
        discovery = self._topology.discovery
        if discovery is None:
            raise ConfigurationError(f"{method}() is for from_cluster routers")
        return discovery
