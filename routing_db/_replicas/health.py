"""Replica health: ejection after connection failures, lag limits, hysteresis.

Pure bookkeeping: no I/O, the clock is passed in. The router asks
``available(now)``; the session and the monitor report what they saw.
"""

from __future__ import annotations

from collections import deque

from .._causal.floor import reached
from .._options import HealthOptions

__all__ = ["HealthOptions", "ReplicaState"]

# A replica over a lag limit serves again only once it is back under this
# fraction of the limit, so one that hovers at the limit does not flap.
_READMIT_FRACTION = 0.5


class ReplicaState:
    """What the router knows about one replica."""

    __slots__ = (
        "_failures",
        "_options",
        "backoff",
        "diverged",
        "draining",
        "ejected",
        "ejections",
        "joining",
        "lag_bytes",
        "lag_seconds",
        "lagging",
        "probe_at",
        "reached_standby",
        "replay_lsn",
        "standby",
        "streaming",
        "suspect",
    )

    def __init__(self, options: HealthOptions) -> None:
        self._options = options
        self._failures: deque[float] = deque()
        self.ejected = False
        self.ejections = 0
        self.backoff = options.probe_initial
        self.probe_at = 0.0
        self.replay_lsn: int | None = None
        self.lag_bytes: int | None = None
        self.lag_seconds: float | None = None
        self.lagging = False
        # Failed lately (ejected, or failures counted in the window): a plain
        # attribute, read on every replica transaction.
        self.suspect = False
        # Last seen as a standby (True), as a server taking writes (False:
        # promoted, it no longer replays the writer's changes), not yet (None).
        self.standby: bool | None = None
        # Receives and applies its primary's changes (None: not known yet).
        self.streaming: bool | None = None
        # A standby was ever reached through it (a primary reached now is
        # one promoted, or behind a reader endpoint, not a misconfiguration).
        self.reached_standby = False
        # Added at runtime and not yet found a standby; being removed.
        self.joining = False
        self.draining = False
        # Its HA manager says it does not follow the current timeline (not
        # yet rejoined, or rewound): it serves no reads, whatever it replayed.
        self.diverged = False

    def available(self, now: float, half_open: bool = True) -> bool:
        """May this replica serve a new transaction at ``now``?

        ``half_open``: an ejected replica is offered again once its probe
        time has come, the read being the probe. Without it (a monitor runs
        and probes), only the monitor re-admits it: no request pays a
        connect timeout to find a host still gone.
        """
        if (
            self.lagging
            or self.joining
            or self.draining
            or self.diverged
            or self.standby is False
        ):
            return False
        return not self.ejected or (half_open and now >= self.probe_at)

    def record_failure(self, now: float) -> bool:
        """Count a connection failure; return True when it ejects the replica."""
        self.suspect = True
        # It may come back rewound onto another timeline (a failover), behind
        # what it had replayed: its position is learned again.
        self.replay_lsn = None
        if self.ejected:
            # A failed probe: wait longer before the next one.
            self.backoff = min(self.backoff * 2, self._options.probe_max)
            self.probe_at = now + self.backoff
            return False
        failures = self._failures
        failures.append(now)
        while failures and failures[0] <= now - self._options.eject_window:
            failures.popleft()
        if len(failures) < self._options.eject_after:
            return False
        failures.clear()
        self.ejected = True
        self.ejections += 1
        self.backoff = self._options.probe_initial
        self.probe_at = now + self.backoff
        return True

    def record_success(self) -> bool:
        """A connection worked; return True when that re-admits the replica."""
        self._failures.clear()
        self.suspect = False
        if not self.ejected:
            return False
        self.ejected = False
        self.backoff = self._options.probe_initial
        return True

    def record_lag(
        self,
        *,
        replay_lsn: int | None,
        lag_bytes: int | None,
        lag_seconds: float | None,
        unbounded: bool = False,
    ) -> None:
        """Store a lag measurement and apply the limits with hysteresis.

        ``unbounded``: behind, not streaming, and no measure of how far: over
        any limit that is set.
        """
        if replay_lsn is not None:
            self.raise_replay_lsn(replay_lsn)
        self.lag_bytes = lag_bytes
        self.lag_seconds = lag_seconds
        options = self._options
        limits = (
            (lag_bytes, options.max_lag_bytes),
            (lag_seconds, options.max_lag_seconds),
        )
        over = any(
            limit is not None and value is not None and value > limit
            for value, limit in limits
        ) or (unbounded and any(limit is not None for _, limit in limits))
        if over:
            self.lagging = True
        elif self.lagging:
            self.lagging = not all(
                limit is None or value is None or value <= limit * _READMIT_FRACTION
                for value, limit in limits
            )

    def raise_replay_lsn(self, lsn: int) -> None:
        """Remember a replay position; it only moves forward (within a domain)."""
        if self.replay_lsn is None or not reached(self.replay_lsn, lsn):
            self.replay_lsn = lsn

    def caught_up(self, floor: int) -> bool:
        """Has this replica (as last seen) replayed WAL up to ``floor``?"""
        return self.replay_lsn is not None and reached(self.replay_lsn, floor)
