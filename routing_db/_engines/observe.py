"""What an engine's pool does: checkout waits, hold times, peaks, timeouts.

Measured at the pool itself: ``Pool.connect`` (the one way SQLAlchemy obtains a
connection, pre-ping included) is wrapped per pool instance (``_compat``)
to time the wait,
and the pool's ``checkout``/``checkin`` events time how long each connection
is held. Listeners (the load harness, metrics, the starvation detector)
subscribe to one ``PoolObserver`` per engine; once the last one leaves, the
observer takes its hooks off the engine.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable
from typing import Any, Protocol

from sqlalchemy import exc as sa_exc

from .._compat import unwrap_pool_connect, wrap_pool_connect
from .hooks import Hooks
from .make import AppEngine, core

__all__ = ["PoolListener", "PoolObserver", "observe"]

_observers: weakref.WeakKeyDictionary[Any, PoolObserver] = weakref.WeakKeyDictionary()


class PoolListener(Protocol):
    """Receives what a ``PoolObserver`` measures (all methods optional to act on)."""

    def waited(self, name: str, seconds: float, timed_out: bool) -> None:
        """A checkout finished (or timed out) after ``seconds``."""

    def held(self, name: str, seconds: float, where: str | None) -> None:
        """A connection went back after ``seconds`` out; ``where`` checked it out."""


class PoolObserver:
    """Times checkouts and holds on one engine's pool."""

    def __init__(self, engine: AppEngine, name: str) -> None:
        self.engine = engine
        self.name = name
        self.listeners: list[PoolListener] = []
        self.peak_checked_out = 0
        self.peak_overflow = 0
        self.checkouts = 0
        self.timeouts = 0
        # connection record id -> (monotonic checkout time, code location)
        self.out: dict[int, tuple[float, str | None]] = {}
        # Set by the starvation detector: names the code that checks out.
        self.locate: Callable[[], str | None] | None = None
        self._pool: Any = None
        self._attach()
        sync = core(engine)
        self._hooks = Hooks()
        self._hooks.listen(sync, "checkout", self._checked_out)
        self._hooks.listen(sync, "checkin", self._checked_in)
        # dispose() replaces the pool object: follow it.
        self._hooks.listen(sync, "engine_disposed", self._disposed)

    def subscribe(self, listener: PoolListener) -> None:
        """Send what this observer measures to ``listener`` too."""
        self.listeners.append(listener)

    def unsubscribe(self, listener: PoolListener) -> None:
        """Stop sending to ``listener``; the last one to go detaches the observer."""
        self.listeners.remove(listener)
        if not self.listeners:
            self._hooks.remove()
            if self._pool is not None:
                unwrap_pool_connect(self._pool)
            if _observers.get(core(self.engine)) is self:
                del _observers[core(self.engine)]

    def _disposed(self, connection: Any) -> None:
        self._attach()

    def _attach(self) -> None:
        pool: Any = core(self.engine).pool
        if pool is self._pool:
            return
        self._pool = pool

        def timed(connect: Callable[[], Any]) -> Callable[[], Any]:
            def timed_connect() -> Any:
                start = time.perf_counter()
                try:
                    connection = connect()
                except sa_exc.TimeoutError:
                    self.timeouts += 1
                    self._waited(time.perf_counter() - start, timed_out=True)
                    raise
                self._waited(time.perf_counter() - start, timed_out=False)
                return connection

            return timed_connect

        wrap_pool_connect(pool, timed)

    def _waited(self, seconds: float, *, timed_out: bool) -> None:
        for listener in self.listeners:
            listener.waited(self.name, seconds, timed_out)

    def _checked_out(self, dbapi_connection: Any, record: Any, proxy: Any) -> None:
        pool = self._pool
        self.checkouts += 1
        where = self.locate() if self.locate is not None else None
        self.out[id(record)] = (time.monotonic(), where)
        checkedout = getattr(pool, "checkedout", None)
        if callable(checkedout):
            self.peak_checked_out = max(self.peak_checked_out, checkedout())
        overflow = getattr(pool, "overflow", None)
        if callable(overflow):
            self.peak_overflow = max(self.peak_overflow, overflow())

    def _checked_in(self, dbapi_connection: Any, record: Any) -> None:
        entry = self.out.pop(id(record), None)
        if entry is None:
            return
        seconds = time.monotonic() - entry[0]
        for listener in self.listeners:
            listener.held(self.name, seconds, entry[1])

    def held_longer_than(self, seconds: float) -> list[tuple[int, float, str | None]]:
        """Connections checked out for longer than ``seconds``: key, age, where."""
        now = time.monotonic()
        return [
            (key, now - start, where)
            for key, (start, where) in list(self.out.items())
            if now - start > seconds
        ]

    def reset_peaks(self) -> None:
        """Start counting peaks, checkouts and timeouts afresh."""
        self.peak_checked_out = 0
        self.peak_overflow = 0
        self.checkouts = 0
        self.timeouts = 0


def observe(engine: AppEngine, name: str) -> PoolObserver:
    """The observer of ``engine``'s pool, created on first use."""
    observer = _observers.get(core(engine))
    if observer is None:
        observer = _observers[core(engine)] = PoolObserver(engine, name)
    return observer
