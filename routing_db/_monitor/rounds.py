"""What a monitor round is, for both faces: which replicas are due, and what
their answers (or failures) and the writer's mean. The asyncio task
(``async_monitor``) and the thread (``thread_monitor``) only do the I/O."""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from sqlalchemy.engine import Connection, Engine

from .._backends.backend import ReplicaStatus
from .._backends.positions import has_positions, replica_status
from .._backends.registry import backend_for
from .._causal.floor import DOMAIN_SHIFT, reached
from .._engines.make import pool_capacity
from .._topology.topology import Topology

__all__ = ["RoundPolicy", "Rounds", "lag_seconds_within", "select_one"]

logger = logging.getLogger("routing_db")

# The writer's positions a policy keeps, with when each was asked: enough
# rounds to bound a replica that keeps up, whatever the interval.
_WRITER_SAMPLES = 128


def _saturated(engine: Engine) -> bool:
    pool: Any = engine.pool
    capacity = pool_capacity(pool)
    checkedout = getattr(pool, "checkedout", None)
    return bool(capacity and callable(checkedout) and checkedout() >= capacity)


def select_one(connection: Connection, writer: int | None) -> ReplicaStatus:
    """A replica without replication positions: it answers, nothing more."""
    connection.exec_driver_sql("SELECT 1")
    return ReplicaStatus(None, None, None, True, None)


def lag_seconds_within(
    status: ReplicaStatus, writer_seen: Iterable[tuple[float, int]], now: float
) -> float | None:
    """A replica's lag in seconds, bounded by what the writer had and when.

    ``writer_seen``: the writer's positions, oldest first, each with the
    ``time.monotonic()`` it was asked at. A replica that has replayed what the
    writer had at ``t`` is at most ``now - t`` behind, whatever its backend
    says: PostgreSQL's measure is the age of the last replayed transaction,
    and on a quiet writer a few bytes of WAL that carry none (a checkpoint,
    a standby snapshot) would make that the time since the last write.
    Where the backend has no measure (a standby that has replayed no
    transaction since it started), the writer's history is the measure.
    """
    reported, position = status.lag_seconds, status.position
    if position is None or reported == 0.0:
        return reported
    seen = list(writer_seen)  # a snapshot: another round may append meanwhile
    for asked_at, writer in reversed(seen):
        if reached(position, writer):
            bound = max(0.0, now - asked_at)
            return bound if reported is None else min(reported, bound)
    # Behind everything the writer was seen at. On the first look, a moment
    # behind and long behind look alike: the seconds wait for the next round.
    if len(seen) <= 1:
        return None
    oldest_at, oldest = seen[0]
    # Another GTID domain's position is neither ahead nor behind (PostgreSQL
    # has one domain).
    if reported is None and position >> DOMAIN_SHIFT == oldest >> DOMAIN_SHIFT:
        # It has not replayed what the writer had then: at least this far.
        return max(0.0, now - oldest_at)
    return reported


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
        self._writer_seen: deque[tuple[float, int]] = deque(maxlen=_WRITER_SAMPLES)

    def writer_seen(self, position: int | None, asked_at: float) -> None:
        """The writer was at ``position`` when asked at ``asked_at``."""
        if position is not None:
            self._writer_seen.append((asked_at, position))

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
        seconds = lag_seconds_within(answer, self._writer_seen, time.monotonic())
        replicas.record_status(
            engine,
            answer._replace(lag_seconds=seconds),
            unbounded=answer.unbounded(writer),
        )


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
