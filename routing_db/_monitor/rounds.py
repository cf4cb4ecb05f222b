"""What a monitor round is, for both faces: which replicas are due, and what
their answers (or failures) and the writer's mean. The asyncio task
(``async_monitor``) and the thread (``thread_monitor``) only do the I/O."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy.engine import Connection, Engine

from .._backends.backend import ReplicaStatus
from .._backends.positions import has_positions, replica_status
from .._backends.registry import backend_for
from .._engines.make import pool_capacity
from .._topology.topology import Topology

__all__ = ["RoundPolicy", "Rounds", "select_one"]

logger = logging.getLogger("routing_db")


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
        dialect = topology.writer.dialect.name
        self.positions = has_positions(dialect)
        self.replica_check = replica_status if self.positions else select_one
        backend = backend_for(dialect)
        # Without replication only an ejected replica's probe tells anything
        # (a SQLite file the app has not created yet is not a failure).
        self._watch_healthy = backend is None or backend.replicates

    def due(self) -> list[Engine]:
        """The replicas to poll this round (an ejected one once its probe is due)."""
        now = time.monotonic()
        replicas = self.topology.replica_set
        return [
            engine
            for engine in self.topology.replica_engines()
            if (state := replicas.state(engine)).draining is False
            and (now >= state.probe_at if state.ejected else self._watch_healthy)
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
                logger.debug("monitor: %s pool is full", engine.url.host)
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
