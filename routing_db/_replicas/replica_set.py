"""The replicas as routing sees them: health, lag, positions, and the choice."""

from __future__ import annotations

import enum
import itertools
import logging
import time
from collections.abc import Sequence
from typing import Any

from sqlalchemy.engine import Connection, Engine

from .._backends.backend import SERVER, ReplicaStatus, clusters_of
from .._backends.positions import replay_position_now, replay_position_on
from .._causal.floor import DOMAIN_SHIFT, CausalFloor
from .._compat import pause
from .._engines.hooks import Hooks
from .._engines.make import pool_capacity
from .._engines.setup import NotAStandby
from .._events import Listeners
from .._retry import error_cause, is_connection_error
from .health import HealthOptions, ReplicaState
from .policies import BalancingPolicy, Candidate, RoundRobin

__all__ = ["Pick", "ReplicaSet"]

logger = logging.getLogger("routing_db")

# How often an ejected replica's cause is logged again while it stays out.
SAY_AGAIN = 60.0

_OUT_SINCE = "routing_db.out_since"
_EWMA = 0.2
_LATENCY_TTL = 5.0  # seconds a hold-time measurement stays meaningful
_MAX_SERVERS = 1024


class Pick(enum.Enum):
    """Why a replica read did not get a replica."""

    CAUGHT_UP = "caught_up"  # a replica is ready (the engine is returned too)
    CAUSAL = "causal"  # no replica has replayed this context's writes yet
    NONE = "none"  # every replica is ejected, lagging or excluded


class _WriterState(ReplicaState):
    """The writer as a reader: never behind, never over a lag limit."""

    __slots__ = ()

    def caught_up(self, floor: int) -> bool:
        return True


class ReplicaSet:
    """Health, lag and replay positions per replica, and which one serves next.

    Its methods run in the session's ``get_bind`` (in SQLAlchemy's greenlet)
    and in the monitor; the clock and all I/O stay inside this class.
    """

    def __init__(
        self,
        engines: Sequence[Engine],
        *,
        names: Sequence[str],
        weights: Sequence[float],
        policy: BalancingPolicy,
        health: HealthOptions,
        positions: bool,
        sticky_seconds: float,
        causal_wait_timeout: float | None,
        writer_reader: Engine | None = None,
        writer_weight: float = 0.0,
        writer_name: str = "writer",
    ) -> None:
        self.engines = tuple(engines)
        self._names = dict(zip(self.engines, names, strict=True))
        self._weight = dict(zip(self.engines, weights, strict=True))
        self._policy = policy
        self._health = health
        self.states = {engine: ReplicaState(health) for engine in self.engines}
        # (server, GTID domain) -> the position it has replayed, as last learned.
        self.replayed: dict[tuple[str, int], int] = {}
        # The clusters the replicas' servers replay (empty: none reached yet).
        self.clusters: frozenset[str] = frozenset()
        # The writer may take a share of replica reads (writer_read_weight):
        # it is then one more member of the choice, after the replicas.
        self._writer_reader = writer_reader
        if writer_reader is not None:
            self._names[writer_reader] = writer_name
            self._weight[writer_reader] = writer_weight
            self.states[writer_reader] = _WriterState(health)
        self._positions = positions
        self.sticky_seconds = sticky_seconds
        self.causal_wait_timeout = causal_wait_timeout
        self.listeners = Listeners()  # the router replaces it with its own
        # Reads probe an ejected replica when its time has come; not while a
        # monitor runs (it probes instead).
        self.half_open = True
        # The members are a cluster's nodes (from_cluster): one of them is
        # the writer, and discovery reports their role changes.
        self.cluster = False
        self._latency: dict[Engine, tuple[float, float]] = {}  # (seconds, when)
        # When each ejected replica's cause was last logged.
        self._said: dict[Engine, float] = {}
        # Each replica's last connection failure, in the driver's words.
        self.causes: dict[Engine, str] = {}
        # Since when no replica could serve a read (None: one can).
        self.writer_only_since: float | None = None
        # Only pool-aware policies get pool numbers (they cost calls per choice).
        self._pool_stats = getattr(policy, "uses_pool_stats", True)
        self._uses_latency = bool(getattr(policy, "uses_latency", False))
        self._arrange()

    def _arrange(self) -> None:
        # What a choice needs, computed again whenever the members change.
        reader = self._writer_reader
        self._members = self.engines if reader is None else (*self.engines, reader)
        self._weights = tuple(self._weight[engine] for engine in self._members)
        # The common case, precomputed: every member well, no pool numbers
        # wanted, so a choice costs no list or Candidate building.
        self._everyone = list(enumerate(self._members))
        self._fixed = [self._candidate(i, engine) for i, engine in self._everyone]
        # Round robin among members that are all well, as one C-level call:
        # what a replica read with nothing to read back costs (get_bind).
        self._cycle = (
            itertools.cycle(self._members).__next__
            if type(self._policy) is RoundRobin and self._members
            else None
        )
        self._refresh()

    def add(self, engine: Engine, *, name: str, weight: float, hooks: Hooks) -> None:
        """A new member; it serves once it is found to be a standby."""
        state = ReplicaState(self._health)
        state.joining = True
        self.states[engine] = state
        self._names[engine] = name
        self._weight[engine] = weight
        self.engines = (*self.engines, engine)
        if self._uses_latency:
            self._measure_holds(engine, hooks)
        self._arrange()

    def drain(self, engine: Engine) -> None:
        """Take ``engine`` out of the choice; transactions on it carry on."""
        self.states[engine].draining = True
        self.engines = tuple(e for e in self.engines if e is not engine)
        self._arrange()

    def forget(self, engine: Engine) -> None:
        """Forget a drained member altogether."""
        self.states.pop(engine, None)
        self._latency.pop(engine, None)

    def install_hooks(self, hooks: Hooks) -> None:
        """Time how long connections are held, for policies that weigh by it."""
        if self._uses_latency:
            for engine in self._members:
                self._measure_holds(engine, hooks)

    def _measure_holds(self, engine: Engine, hooks: Hooks) -> None:
        # A moving average of how long connections stay checked out, for
        # policies that weigh replicas by it (least_busy).
        def checked_out(dbapi_connection: Any, record: Any, proxy: Any) -> None:
            record.info[_OUT_SINCE] = time.monotonic()

        def checked_in(dbapi_connection: Any, record: Any) -> None:
            since = record.info.pop(_OUT_SINCE, None)
            if since is None:
                return
            now = time.monotonic()
            held = now - since
            previous = self._latency.get(engine)
            average = (
                held if previous is None else previous[0] + _EWMA * (held - previous[0])
            )
            self._latency[engine] = (average, now)

        hooks.listen(engine, "checkout", checked_out)
        hooks.listen(engine, "checkin", checked_in)

    def __contains__(self, engine: object) -> bool:
        return engine in self.states

    def state(self, engine: Engine) -> ReplicaState:
        """What is known about ``engine``."""
        return self.states[engine]

    def _candidate(self, index: int, engine: Engine) -> Candidate:
        if not self._pool_stats:
            return Candidate(
                index=index,
                name=self._names[engine],
                weight=self._weights[index],
                checked_out=0,
                capacity=0,
                writer=engine is self._writer_reader,
            )
        pool: Any = engine.pool
        capacity = pool_capacity(pool)
        checkedout = getattr(pool, "checkedout", None)
        return Candidate(
            index=index,
            name=self._names[engine],
            weight=self._weights[index],
            checked_out=checkedout() if checkedout else 0,
            capacity=capacity,
            latency=self._recent_latency(engine),
            writer=engine is self._writer_reader,
        )

    def _recent_latency(self, engine: Engine) -> float | None:
        # An old measurement says nothing: a replica that was slow and then
        # got no traffic must be tried again, not avoided for ever.
        measured = self._latency.get(engine)
        if measured is None or time.monotonic() - measured[1] > _LATENCY_TTL:
            return None
        return measured[0]

    def pick(
        self, floor: CausalFloor | None, exclude: frozenset[Engine] = frozenset()
    ) -> tuple[Pick, Engine | None]:
        """Choose the replica for a new transaction that must see ``floor``."""
        if self._all_well and not exclude:
            available = self._everyone
        else:
            now = time.monotonic()
            available = [
                (index, engine)
                for index, engine in self._everyone
                if engine not in exclude
                and self.states[engine].available(now, self.half_open)
            ]
        if not available:
            if self._everyone and not exclude and self.writer_only_since is None:
                self.writer_only_since = time.monotonic()
                logger.warning(
                    "no replica can serve reads (each is ejected, lagging or "
                    "not a standby): reads go to the writer, or fail where "
                    "fallback_to_writer is off, until one is back"
                )
            return Pick.NONE, None
        if floor is None:  # nothing of this context's to read back
            return Pick.CAUGHT_UP, self._choose(available)
        if self._unknown(floor, self.clusters or None):
            return Pick.CAUSAL, None
        needs = self._needs(floor, self.clusters or None)
        if not needs:
            return Pick.CAUGHT_UP, self._choose(available)
        # The policy picks among all available replicas, so balancing does not
        # depend on which positions happen to be cached.
        chosen = self._choose(available)
        if self._caught_up(chosen, needs):
            return Pick.CAUGHT_UP, chosen  # the cached position: no round trip
        if self._check_replay(chosen, needs):
            return Pick.CAUGHT_UP, chosen
        ready = [
            item
            for item in available
            if item[1] is not chosen and self._caught_up(item[1], needs)
        ]
        if ready:
            return Pick.CAUGHT_UP, self._choose(ready)
        engine = self._wait_for_replay(
            [engine for _, engine in available if engine is not chosen], chosen, needs
        )
        return (Pick.CAUGHT_UP, engine) if engine is not None else (Pick.CAUSAL, None)

    def serves(self, connection: Connection, floor: CausalFloor) -> bool:
        """May ``connection``, a replica's just opened for a read that must see
        ``floor``, serve it? Judged by the server it reached (behind one URL
        connections may reach different servers), asked on the connection
        itself when its cached position is not enough, waiting up to
        ``causal_wait_timeout``."""
        engine = connection.engine
        if engine is self._writer_reader:
            return True
        info = connection.info
        clusters = clusters_of(info)
        if self._unknown(floor, clusters):
            return False
        needs = self._needs(floor, clusters)
        server: str | None = info.get(SERVER)
        if not needs or self.server_reached(server, needs):
            return True
        deadline = time.monotonic() + (self.causal_wait_timeout or 0.0)
        delay = 0.005
        while True:
            try:
                for need in needs:
                    position = replay_position_on(connection, need)
                    if position is not None:
                        self.learned(server, position)
                        self.states[engine].raise_replay_lsn(position)
            except Exception as exc:
                # The read goes elsewhere; a broken connection is a failure.
                self._unreadable(engine, exc)
                return False
            if self.server_reached(server, needs):
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            pause(min(delay, remaining))
            delay = min(delay * 2, 0.1)

    def _needs(self, floor: CausalFloor, clusters: frozenset[str] | None) -> list[int]:
        if not self._positions:
            return []
        return floor.needs(clusters)

    def _unknown(self, floor: CausalFloor, clusters: frozenset[str] | None) -> bool:
        # A recent commit whose position is unknown (it could not be read
        # after COMMIT, or the backend has none): a replica that reached an
        # older position of this context says nothing about it. Likewise a
        # token's recent write on another cluster (a blue/green switch).
        return (
            floor.wrote_at is not None
            and time.time() - floor.wrote_at < self.sticky_seconds
        ) or floor.told_elsewhere(clusters, time.time(), self.sticky_seconds)

    def _caught_up(self, engine: Engine, needs: list[int]) -> bool:
        state = self.states[engine]
        return all(state.caught_up(need) for need in needs)

    def _choose(self, available: list[tuple[int, Engine]]) -> Engine:
        if len(available) == 1:
            return available[0][1]
        if self._pool_stats:
            candidates = [self._candidate(index, engine) for index, engine in available]
        elif available is self._everyone:
            candidates = self._fixed
        else:
            candidates = [self._fixed[index] for index, _ in available]
        chosen = self._policy.choose(candidates)
        return self._members[chosen.index]

    def _check_replay(self, engine: Engine, needs: list[int]) -> bool:
        """Ask ``engine`` for its replay position now; has it reached ``needs``?"""
        state = self.states[engine]
        try:
            for need in needs:
                lsn, server = replay_position_now(engine, need)
                if lsn is not None:
                    state.raise_replay_lsn(lsn)
                    self.learned(server, lsn)
        except Exception as exc:
            self._unreadable(engine, exc)
            return False
        return self._caught_up(engine, needs)

    def _unreadable(self, engine: Engine, exc: Exception) -> None:
        # Never the application's problem: a replica whose position cannot
        # be read counts as not caught up (and, if its connection broke, as
        # failed); the read goes to another replica or the writer.
        if is_connection_error(exc):
            self.failed(engine, exc)
        else:
            logger.info(
                "replay position of %s unknown (%s)",
                self._names[engine],
                type(exc).__name__,
            )

    def _wait_for_replay(
        self, others: list[Engine], chosen: Engine, need: list[int]
    ) -> Engine | None:
        # Ask the others once, then keep asking every replica until
        # causal_wait_timeout when one is configured. Each replica is judged
        # by its own position: one caught up never vouches for another.
        for engine in others:
            if self._check_replay(engine, need):
                return engine
        deadline = time.monotonic() + (self.causal_wait_timeout or 0.0)
        delay = 0.005
        while (remaining := deadline - time.monotonic()) > 0:
            pause(min(delay, remaining))
            delay = min(delay * 2, 0.1)
            for engine in (chosen, *others):
                if self._check_replay(engine, need):
                    return engine
        return None

    def _refresh(self) -> None:
        # A replica that failed lately is left to pick(), whose caller opens
        # its connection first to see whether it works again.
        self._all_well = not any(
            state.ejected
            or state.lagging
            or state.suspect
            or state.joining
            or state.diverged
            or state.standby is False
            for engine, state in self.states.items()
            if engine in self._members
        )
        self.quick = self._cycle if self._all_well else None
        if self.writer_only_since is not None and self._anyone_serves():
            self.writer_only_since = None
            logger.warning("a replica serves reads again")

    def _anyone_serves(self) -> bool:
        now = time.monotonic()
        return any(
            self.states[engine].available(now, False) for _, engine in self._everyone
        )

    def ejected_because(self, engine: Engine) -> str | None:
        """Why ``engine`` is out of the read set (None: it is not ejected)."""
        state = self.states.get(engine)
        if state is None or not state.ejected:
            return None
        return self.causes.get(engine, "connections failed")

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
        now = time.monotonic()
        ejected = state.record_failure(now)
        self._refresh()
        name = self._names[engine]
        if isinstance(error, NotAStandby):
            cause = NotAStandby.cause
        else:
            cause = error_cause(error, [engine.url.password])
        self.causes[engine] = cause
        if ejected:
            self.listeners.emit("ejected", name)
        elif not state.ejected or now - self._said.get(engine, now) < SAY_AGAIN:
            return
        # Said when it is ejected, and again at a bounded rate while its
        # probes keep failing: a mistyped URL must not be one line at startup.
        self._said[engine] = now
        logger.warning(
            "replica %s %s: %s",
            name,
            "ejected after a connection failure" if ejected else "still ejected",
            cause,
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
            "replica %s %s",
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
            self._said.pop(engine, None)
            self.listeners.emit("readmitted", self._names[engine])
            logger.warning(
                "replica %s re-admitted",
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
            logger.warning("replica %s joins", self._names[engine])
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
                "replica %s is not a standby (it takes writes): it "
                "serves no reads; check replica_urls",
                name,
            )
            return
        old, new = ("replica", "unknown") if before else ("unknown", "replica")
        self.listeners.emit("role_changed", name, old, new)
        logger.warning(
            "replica %s %s",
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
                    "replica %s %s",
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
                "replica %s %s (lag %s bytes, %s s)",
                name,
                "over the lag limit, skipped" if state.lagging else "back under it",
                status.lag_bytes,
                status.lag_seconds,
            )
