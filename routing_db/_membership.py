"""Replicas joining and leaving a running router."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine

from ._hooks import Hooks
from ._options import HealthOptions, ObservabilityOptions
from ._topology import Topology
from ._wiring import hook_replica

__all__ = ["drain", "join"]

logger = logging.getLogger("routing_db")


def join(
    topology: Topology,
    engine: AsyncEngine,
    hooks: Hooks,
    *,
    name: str,
    weight: float,
    health: HealthOptions,
    observability: ObservabilityOptions,
) -> None:
    """Add ``engine`` as a replica; it serves once found a standby."""
    topology.add_replica(engine, name)
    topology.replica_set.add(engine.sync_engine, name=name, weight=weight, hooks=hooks)
    hook_replica(
        engine, hooks, name=name, health=health, observability=observability,
        replica_set=topology.replica_set,
    )  # fmt: skip


async def drain(topology: Topology, engine: AsyncEngine, *, seconds: float) -> None:
    """Give ``engine`` no new transactions, wait for its open ones, dispose it."""
    sync = engine.sync_engine
    pool: Any = sync.pool
    topology.replica_set.drain(sync)
    if pool.checkedout():
        loop = asyncio.get_running_loop()
        drained = asyncio.Event()

        def check() -> None:
            if not pool.checkedout():
                drained.set()

        def checked_in(dbapi_connection: Any, record: Any) -> None:
            loop.call_soon(check)  # once the pool has counted it back

        event.listen(sync, "checkin", checked_in)
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(drained.wait(), seconds)
        finally:
            event.remove(sync, "checkin", checked_in)
    if pool.checkedout():
        logger.warning(
            "routing_db: replica %s removed with %d connections in use after "
            "drain_timeout (%g s); they close as their transactions end",
            topology.name(engine),
            pool.checkedout(),
            seconds,
        )
    topology.remove_replica(engine)
    topology.replica_set.forget(sync)
    await engine.dispose()
