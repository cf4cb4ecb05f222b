"""What the monitor and failed connections report about replicas, recorded.

``ReplicaSet`` is made of this (the records: ejection, re-admission, role,
lag, streaming, restarts) and of the choice among replicas (``_replicas``).
"""

from __future__ import annotations

import logging
import time

from sqlalchemy.engine import Engine

from ._causal import DOMAIN_SHIFT
from ._events import Listeners
from ._health import HealthOptions, ReplicaState
from ._positions import ReplicaStatus

__all__ = ["ReplicaRecords"]

logger = logging.getLogger("routing_db")

_MAX_SERVERS = 1024


class ReplicaRecords:
    """Per-replica state, and the events that change it."""

    states: dict[Engine, ReplicaState]
    # (server, GTID domain) -> the position it has replayed, as last learned.
    replayed: dict[tuple[str, int], int]
    # The clusters the replicas' servers replay (empty: none reached yet).
    clusters: frozenset[str]
    listeners: Listeners
    half_open: bool
    cluster: bool
    _names: dict[Engine, str]
    _health: HealthOptions

    def _refresh(self) -> None:
        raise NotImplementedError

    def may_connect(self, engine: Engine) -> bool:
        """May a read open a connection to ``engine`` now (in the set, or its
        probe is due)?"""
        state = self.states.get(engine)
        return state is None or state.available(time.monotonic(), self.half_open)

    def failed(self, engine: Engine, error: BaseException) -> None:
        """A connection to ``engine`` failed (it may be ejected)."""
        state = self.states.get(engine)
        if state is None:
            return
        ejected = state.record_failure(time.monotonic())
        self._refresh()
        if ejected:
            self.listeners.emit("ejected", self._names[engine])
            logger.warning(
                "routing_db: replica %s ejected after a connection failure (%s)",
                self._names[engine],
                type(error).__name__,
            )

    def set_diverged(self, engine: Engine, diverged: bool, *, why: str) -> None:
        """Does ``engine``'s node follow the current timeline (False) or not
        (True: it serves no reads)? ``why`` says who judged it so."""
        state = self.states.get(engine)
        if state is None or state.diverged == diverged:
            return
        state.diverged = diverged
        self._refresh()
        logger.warning(
            "routing_db: replica %s %s",
            self._names[engine],
            f"is {why}: it serves no reads"
            if diverged
            else "follows the current timeline again: it serves reads",
        )

    def forget_positions(self) -> None:
        """Forget every replay position: the writer changed, and a standby may
        be rewound onto the new primary's timeline, behind what it had replayed."""
        for state in self.states.values():
            state.replay_lsn = None
        self.replayed.clear()

    def learned(self, server: str | None, position: int) -> None:
        """``server`` has replayed up to ``position`` (it only moves forward)."""
        if server is None:
            return
        key = (server, position >> DOMAIN_SHIFT)
        known = self.replayed.get(key)
        if known is None or position > known:
            if len(self.replayed) >= _MAX_SERVERS:
                # Servers come and go (restarts, a reader endpoint's pods);
                # the oldest entries are of servers gone long ago.
                del self.replayed[next(iter(self.replayed))]
            self.replayed[key] = position

    def server_reached(self, server: str | None, needs: list[int]) -> bool:
        """Has ``server``, as last learned, replayed every one of ``needs``?"""
        return server is not None and all(
            self.replayed.get((server, need >> DOMAIN_SHIFT), -1) >= need
            for need in needs
        )

    def succeeded(self, engine: Engine) -> None:
        """A connection to ``engine`` worked (it may be re-admitted)."""
        state = self.states.get(engine)
        if state is None or not state.suspect:
            return  # the common case: nothing to clear
        readmitted = state.record_success()
        self._refresh()
        if readmitted:
            self.listeners.emit("readmitted", self._names[engine])
            logger.warning(
                "routing_db: replica %s re-admitted",
                self._names[engine],
            )

    def record_role(
        self,
        engine: Engine,
        standby: bool,
        clusters: frozenset[str] | None = None,
    ) -> bool:
        """What ``engine`` was found to be; True when a read should just go
        elsewhere (a standby was reached through it before, or it is a node
        of a cluster).

        A replica that takes writes (promoted) leaves the read set until it is
        found to be a standby again.
        """
        state = self.states.get(engine)
        if state is None:
            return False
        if clusters:
            self.clusters = self.clusters | clusters
        if not self._health.require_standby:
            standby = True  # a server taking writes serves reads on purpose
        before = state.standby
        state.standby = standby
        # Behind a reader endpoint one connection may reach a standby and the
        # next a primary (a failover under way): that is no misconfiguration.
        was_standby = state.reached_standby
        state.reached_standby = was_standby or standby
        if standby and state.joining:
            state.joining = False  # a new member: it serves from now on
            self._refresh()
            logger.warning("routing_db: replica %s joins", self._names[engine])
        if before != standby:
            self._refresh()
            # A cluster's nodes change roles by design: discovery reports it.
            if not self.cluster:
                self._report_role(engine, before, standby)
        return was_standby or self.cluster

    def _report_role(self, engine: Engine, before: bool | None, standby: bool) -> None:
        name = self._names[engine]
        if before is None:
            if standby:
                return  # first seen, as expected
            logger.error(
                "routing_db: replica %s is not a standby (it takes writes): it "
                "serves no reads; check replica_urls",
                name,
            )
            return
        old, new = ("replica", "unknown") if before else ("unknown", "replica")
        self.listeners.emit("role_changed", name, old, new)
        logger.warning(
            "routing_db: replica %s %s",
            name,
            "is a standby again: it serves reads"
            if standby
            else "is not a standby any more (promoted?): it no longer serves reads",
        )

    def record_status(
        self, engine: Engine, status: ReplicaStatus, *, unbounded: bool = False
    ) -> None:
        """Store what the monitor learned of ``engine``: lag and streaming.

        ``unbounded``: behind the writer, not streaming, with no measure of
        how far (it counts as over the lag limits).
        """
        state = self.states.get(engine)
        if state is None:
            return  # removed while the monitor polled it
        name = self._names[engine]
        if status.streaming is not None and status.streaming != state.streaming:
            if status.streaming is False or state.streaming is False:
                self.listeners.emit("streaming_changed", name, status.streaming)
                logger.warning(
                    "routing_db: replica %s %s",
                    name,
                    "streams again"
                    if status.streaming
                    else "does not stream from its primary (not_streaming): it "
                    "serves only while within the lag limits",
                )
            state.streaming = status.streaming
        if status.position is None:
            return
        self.learned(status.server, status.position)
        was = state.lagging
        state.record_lag(
            replay_lsn=status.position,
            lag_bytes=status.lag_bytes,
            lag_seconds=status.lag_seconds,
            unbounded=unbounded,
        )
        self._refresh()
        if state.lagging != was:
            logger.warning(
                "routing_db: replica %s %s (lag %s bytes, %s s)",
                name,
                "over the lag limit, skipped" if state.lagging else "back under it",
                status.lag_bytes,
                status.lag_seconds,
            )
