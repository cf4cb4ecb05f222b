"""Read-your-writes across processes: positions kept per application key.

After a commit that wrote, the position is saved in a store (Redis:
``routing_db.redis``) under the context's ``causal_key`` (a user, a tenant);
a read under the same key in any process must see at least that. A store
that cannot be reached never makes a read stale, nor fails one: reads with a
key go to the writer until the store answers again and ``ttl`` has passed
since the last position it may have missed.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from contextvars import ContextVar, Token
from typing import Protocol

from .._decide.context import ContextDecorator
from .floor import ANY_CLUSTER, CausalFloor

__all__ = [
    "CAUSAL_KEY",
    "UNKNOWN",
    "CausalStore",
    "SharedFloors",
    "causal_key",
    "combined",
]

logger = logging.getLogger("routing_db")

CAUSAL_KEY: ContextVar[str | None] = ContextVar("routing_db_causal_key", default=None)
"""The application key (user, tenant) whose stored position this context uses."""

_PENDING_CAP = 10_000
_FLUSH_AT_ONCE = 20


class CausalStore(Protocol):
    """Where positions are kept per key; raises when it cannot be reached."""

    ttl: float

    def load(self, key: str) -> CausalFloor | None:
        """The position stored for ``key`` (``None``: none, or expired;
        ``UNKNOWN``: the store may have lost it, as after a restart)."""

    def save(self, key: str, floor: CausalFloor) -> None:
        """Raise ``key``'s stored position to ``floor``'s, never lower it."""


class causal_key(ContextDecorator):
    """Name the application key whose stored position reads and writes use:
    context manager (``with``/``async with``) and decorator (sync and async)."""

    __slots__ = ("_key", "_tokens")

    def __init__(self, key: object) -> None:
        self._key = None if key is None else str(key)
        self._tokens: list[Token[str | None]] = []

    def _enter(self) -> None:
        self._tokens.append(CAUSAL_KEY.set(self._key))

    def _exit(self) -> None:
        CAUSAL_KEY.reset(self._tokens.pop())


class _Unknown(CausalFloor):
    __slots__ = ()

    def __repr__(self) -> str:
        return "UNKNOWN"


UNKNOWN: CausalFloor = _Unknown()
"""What ``SharedFloors.floor`` returns when the store cannot say: read on the writer."""


class SharedFloors:
    """A router's use of its store: outages are logged once and read safely."""

    def __init__(self, store: CausalStore, *, retry_seconds: float = 1.0) -> None:
        self.store = store
        # While a store that failed is not asked again: its timeout is not
        # paid by every read of an outage.
        self._retry_seconds = retry_seconds
        self._lock = threading.Lock()
        self._down = False
        self._retry_at = 0.0
        # Positions saved in vain during an outage may be missing from the
        # store for up to ttl after it answers again.
        self._unsure_until = 0.0
        # Saves that failed, saved again once the store answers (other
        # processes read them from then on); the oldest go first past the cap.
        self._pending: dict[str, CausalFloor] = {}

    def floor(
        self, key: str, clusters: frozenset[str] | None = None
    ) -> CausalFloor | None:
        """What a read under ``key`` on a server of ``clusters`` must see;
        ``UNKNOWN`` if the store cannot say."""
        now = time.monotonic()
        if self._down and now < self._retry_at:
            return UNKNOWN
        found: CausalFloor | None = None
        try:
            for cluster in sorted(clusters or (ANY_CLUSTER,)):
                stored = self.store.load(_scoped(key, cluster))
                if stored is UNKNOWN:
                    found = UNKNOWN
                elif stored is not None and found is not UNKNOWN:
                    found = combined(found, _relabel(stored, cluster))
        except Exception as exc:  # the read goes to the writer instead
            self._failed(exc)
            return UNKNOWN
        self._answered()
        if time.monotonic() < self._unsure_until:
            return UNKNOWN
        return found

    def wrote(
        self, key: str, floor: CausalFloor, cluster: str | None = ANY_CLUSTER
    ) -> None:
        """Save ``floor``'s position on ``cluster`` (None: the commit's
        position is unknown) for ``key`` after a commit that wrote; never
        raises. Positions are kept per cluster: a key's writes on two
        clusters never compare."""
        mark = None if cluster is None else floor.marks.get(cluster)
        own = CausalFloor(
            None if mark is None else mark.position,
            floor.wrote_at,
            None if mark is None else mark.server,
        )
        key = _scoped(key, cluster or ANY_CLUSTER)
        if self._down and time.monotonic() < self._retry_at:
            self._missed(key, own)
            return
        try:
            self.store.save(key, own)
        except Exception as exc:  # the commit stands; reads use the writer
            self._failed(exc)
            self._missed(key, own)
            return
        self._answered()

    def _missed(self, key: str, floor: CausalFloor) -> None:
        with self._lock:
            self._unsure_until = time.monotonic() + self.store.ttl
            newest = combined(self._pending.pop(key, None), floor)
            assert newest is not None
            self._pending[key] = newest
            while len(self._pending) > _PENDING_CAP:
                del self._pending[next(iter(self._pending))]

    def _failed(self, exc: BaseException) -> None:
        with self._lock:
            self._retry_at = time.monotonic() + self._retry_seconds
            if self._down:
                return
            self._down = True
        logger.warning(
            "the causal store cannot be reached (%s): reads under "
            "a causal_key go to the writer until it answers",
            type(exc).__name__,
        )

    def _answered(self) -> None:
        if self._down:
            with self._lock:
                was_down, self._down = self._down, False
                self._unsure_until = max(
                    self._unsure_until, time.monotonic() + self.store.ttl
                )
            if was_down:
                logger.warning(
                    "the causal store answers again; reads under a "
                    "causal_key use it once its ttl has passed"
                )
        if self._pending:
            self._flush()

    def _flush(self) -> None:
        # A few at a time: the operation that found the store back belongs
        # to a request, which must not pay for a whole outage's saves.
        with self._lock:
            keys = list(itertools.islice(self._pending, _FLUSH_AT_ONCE))
            batch = [(key, self._pending.pop(key)) for key in keys]
        for key, floor in batch:
            try:
                self.store.save(key, floor)
            except Exception as exc:
                self._failed(exc)
                self._missed(key, floor)
                return


def _scoped(key: str, cluster: str) -> str:
    # The store's key: the application key, and the cluster written to.
    return key if cluster == ANY_CLUSTER else f"{key}@{cluster}"


def _relabel(stored: CausalFloor, cluster: str) -> CausalFloor:
    # A stored position is its key's cluster's.
    floor = CausalFloor(wrote_at=stored.wrote_at)
    for mark in stored.marks.values():
        floor.raise_to(mark.position, None, mark.server, cluster, at=mark.at)
    return floor


def combined(own: CausalFloor | None, stored: CausalFloor | None) -> CausalFloor | None:
    """The floor that covers both (``UNKNOWN`` wins)."""
    if stored is None or stored is UNKNOWN:
        return own if stored is None else stored
    if own is None:
        return stored
    both = CausalFloor()
    for floor in (own, stored):
        both.cover(floor)
    return both
