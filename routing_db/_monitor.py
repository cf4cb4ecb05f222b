"""The background monitor: replica lag polling and probes of ejected replicas."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from ._bounds import MONITOR_PROBING
from ._engines import ReplicaRestarted, pool_capacity
from ._positions import (
    ReplicaStatus,
    has_positions,
    replica_status,
    takes_writes,
    writer_position,
)
from ._topology import Topology

__all__ = ["Monitor"]

logger = logging.getLogger("routing_db")


def _saturated(engine: AsyncEngine) -> bool:
    pool: Any = engine.sync_engine.pool
    capacity = pool_capacity(pool)
    checkedout = getattr(pool, "checkedout", None)
    return bool(capacity and callable(checkedout) and checkedout() >= capacity)


async def _select_one(engine: AsyncEngine) -> None:
    async with engine.connect() as connection:
        await connection.exec_driver_sql("SELECT 1")


class Monitor:
    """Polls every replica each ``interval`` seconds while it runs."""

    def __init__(
        self,
        topology: Topology,
        *,
        interval: float,
        check_timeout: float,
        after_round: Callable[[], None] | None = None,
    ) -> None:
        self._topology = topology
        self._interval = interval
        self._check_timeout = check_timeout
        self._after_round = after_round
        self._task: asyncio.Task[None] | None = None
        self._positions = has_positions(topology.async_writer.dialect.name)

    @property
    def running(self) -> bool:
        """Is the polling task alive?"""
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        """Start polling (idempotent); needs a running event loop."""
        if not self.running:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name="routing_db monitor"
            )

    async def stop(self) -> None:
        """Stop polling and wait for the task to end."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            # asyncio.wait neither raises the task's CancelledError nor
            # absorbs one sent to our caller (awaiting the task under
            # suppress(CancelledError) would do both).
            await asyncio.wait({task})

    async def poll_once(self) -> None:
        """One round: the writer's role and position, then every replica due."""
        # Its connections to an ejected replica are the probes that bring
        # it back (router.poll() too): reads open none.
        probing = MONITOR_PROBING.set(True)
        try:
            await self._round()
        finally:
            MONITOR_PROBING.reset(probing)

    async def _round(self) -> None:
        topology = self._topology
        if topology.discovery is not None:
            # Every node's role first, each bounded on its own connection:
            # nothing here waits for a writer that may be gone.
            await topology.discovery.check()
            writer_known = topology.writer_ok
        else:
            writer_known = self._positions and await self._writer_takes_writes()
        writer_lsn: int | None = None
        if self._positions and writer_known:
            try:
                writer_lsn = await self._bounded(writer_position(topology.async_writer))
            except Exception as exc:  # the writer's health is not ours to judge
                logger.debug("routing_db monitor: writer position unavailable: %r", exc)
        now = time.monotonic()
        replicas = topology.replica_set
        due = [
            replica
            for replica in topology.async_replicas
            if (state := replicas.state(replica.sync_engine)).draining is False
            and (not state.ejected or now >= state.probe_at)
            # A cluster's primary: its role is discovery's, it has no lag.
            and not (replicas.cluster and state.standby is False)
        ]
        await asyncio.gather(*(self._poll(replica, writer_lsn) for replica in due))

    async def _writer_takes_writes(self) -> bool:
        topology = self._topology
        try:
            takes = await self._bounded(takes_writes(topology.async_writer))
        except Exception as exc:  # down or restarting: no verdict on its role
            logger.debug("routing_db monitor: writer role unknown: %r", exc)
            return False
        if takes:
            topology.writer_found()
        elif topology.writer_ok:
            topology.writer_lost()
            # Its pooled connections go to a server that is not the primary.
            await topology.async_writer.dispose()
        return bool(takes)

    async def _bounded(self, awaitable: Any) -> Any:
        return await asyncio.wait_for(awaitable, timeout=self._check_timeout)

    async def _poll(self, replica: AsyncEngine, writer_lsn: int | None) -> None:
        replicas = self._topology.replica_set
        engine = replica.sync_engine
        try:
            if self._positions:
                status = await self._bounded(replica_status(replica, writer_lsn))
            else:
                await self._bounded(_select_one(replica))
                status = ReplicaStatus(None, None, None, True, None)
        except ReplicaRestarted:
            return  # its position is learned again next round, not a failure
        except Exception as exc:
            if _saturated(replica):
                # Waiting for a connection from a full pool says the replica
                # is busy, not that it is broken: no verdict this round.
                logger.debug("routing_db monitor: %s pool is full", replica.url.host)
                return
            replicas.failed(engine, exc)
            return
        replicas.record_role(engine, standby=status.standby)
        if not status.standby:
            return  # it answers, but its replay position means nothing now
        replicas.succeeded(engine)
        replicas.record_status(engine, status, unbounded=status.unbounded(writer_lsn))

    async def _run(self) -> None:
        # Also ends once stop() has let go of this task: on Python 3.11,
        # asyncio.wait_for (in _bounded) can swallow the cancellation that
        # stop() sends (cpython#86296), and stop() would then wait forever.
        while asyncio.current_task() is self._task:
            try:
                await self.poll_once()
                if self._after_round is not None:
                    self._after_round()
            except Exception:  # pragma: no cover - a bug must not end the loop
                logger.exception("routing_db monitor: poll failed")
            await asyncio.sleep(self._interval)
