"""The background monitor: replica lag polling and probes of ejected replicas."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy.engine import Connection, Engine
from sqlalchemy.ext.asyncio import AsyncEngine

from .._backends.positions import (
    ReplicaStatus,
    has_positions,
    replica_status,
    takes_writes,
    writer_position,
)
from .._bounds.connect import MONITOR_PROBING, checked_within
from .._engines.make import dispose, pool_capacity
from .._topology.discovery import AsyncDiscovery
from .._topology.topology import Topology

__all__ = ["Monitor", "RoundPolicy", "Rounds", "select_one"]

logger = logging.getLogger("routing_db")
T = TypeVar("T")


def _saturated(engine: Engine) -> bool:
    pool: Any = engine.pool
    capacity = pool_capacity(pool)
    checkedout = getattr(pool, "checkedout", None)
    return bool(capacity and callable(checkedout) and checkedout() >= capacity)


def select_one(connection: Connection, writer: int | None) -> ReplicaStatus:
    """A replica without replication positions: it answers, nothing more."""
    connection.exec_driver_sql("SELECT 1")
    return ReplicaStatus(None, None, None, True, None)


class RoundPolicy:
    """What a monitor round checks and what it makes of the answers.

    Each face's monitor (an asyncio task, a thread) does the I/O of a round
    and hands every answer here: the rules exist once.
    """

    def __init__(self, topology: Topology) -> None:
        self.topology = topology
        self.positions = has_positions(topology.writer.dialect.name)
        self.replica_check = replica_status if self.positions else select_one

    def due(self) -> list[Engine]:
        """The replicas to poll this round (an ejected one once its probe is due)."""
        now = time.monotonic()
        replicas = self.topology.replica_set
        return [
            engine
            for engine in self.topology.replica_engines()
            if (state := replicas.state(engine)).draining is False
            and (not state.ejected or now >= state.probe_at)
            # A cluster's primary: its role is discovery's, it has no lag.
            and not (replicas.cluster and state.standby is False)
        ]

    def writer_answered(self, takes: bool) -> bool:
        """Record whether the writer takes writes; True: drop its pooled
        connections (they go to a server that is not the primary)."""
        topology = self.topology
        if takes:
            topology.writer_found()
            return False
        if topology.writer_ok:
            topology.writer_lost()
            return True
        return False

    def polled(
        self, engine: Engine, answer: ReplicaStatus | Exception, writer: int | None
    ) -> None:
        """Record a replica's answer (or the error that took its place)."""
        replicas = self.topology.replica_set
        if isinstance(answer, Exception):
            if _saturated(engine):
                # Waiting for a connection from a full pool says the replica
                # is busy, not that it is broken: no verdict this round.
                logger.debug("routing_db monitor: %s pool is full", engine.url.host)
                return
            replicas.failed(engine, answer)
            return
        replicas.record_role(engine, standby=answer.standby)
        if not answer.standby:
            return  # it answers, but its replay position means nothing now
        replicas.succeeded(engine)
        replicas.record_status(engine, answer, unbounded=answer.unbounded(writer))


class Rounds:
    """What a monitor of either face holds: its topology, policy and schedule."""

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
        self._policy = RoundPolicy(topology)


class Monitor(Rounds):
    """Polls every replica each ``interval`` seconds while it runs (asyncio)."""

    _task: asyncio.Task[None] | None = None

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
        topology, policy = self._topology, self._policy
        if topology.discovery is not None:
            # Every node's role first, each bounded on its own connection:
            # nothing here waits for a writer that may be gone.
            discovery = topology.discovery
            assert isinstance(discovery, AsyncDiscovery), "a Router's"
            await discovery.check()
            writer_known = topology.writer_ok
        else:
            writer_known = policy.positions and await self._writer_takes_writes()
        writer_lsn: int | None = None
        if policy.positions and writer_known:
            try:
                writer_lsn = await self._check(topology.writer, writer_position)
            except Exception as exc:  # the writer's health is not ours to judge
                logger.debug("routing_db monitor: writer position unavailable: %r", exc)
        await asyncio.gather(*(self._poll(e, writer_lsn) for e in policy.due()))

    async def _poll(self, engine: Engine, writer_lsn: int | None) -> None:
        # Each answer is recorded as it comes: not after a hung replica's.
        policy = self._policy
        answer: ReplicaStatus | Exception
        try:
            answer = await self._check(engine, policy.replica_check, writer_lsn)
        except Exception as exc:
            answer = exc
        policy.polled(engine, answer, writer_lsn)

    async def _writer_takes_writes(self) -> bool:
        topology = self._topology
        try:
            takes = await self._check(topology.writer, takes_writes)
        except Exception as exc:  # down or restarting: no verdict on its role
            logger.debug("routing_db monitor: writer role unknown: %r", exc)
            return False
        if self._policy.writer_answered(takes):
            await dispose(topology.app_writer)
        return bool(takes)

    async def _check(self, engine: Engine, check: Callable[..., T], *args: Any) -> T:
        """``check(connection, *args)`` on a new connection of ``engine``, bounded."""
        app = self._topology.app_engine(engine)
        assert isinstance(app, AsyncEngine), "the asyncio monitor of a Router"
        return await checked_within(app, check, *args, seconds=self._check_timeout)

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
