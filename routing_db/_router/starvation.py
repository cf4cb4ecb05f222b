"""The starvation detector: connections held too long, checkouts waiting too long.

A connection held across a long await keeps its pool slot; enough of them and
every other request waits out ``pool_timeout``. This names the code that
checked such a connection out, while it is still held (the monitor scans every
``monitor_interval``) and when it comes back.
"""

from __future__ import annotations

import logging

from .._compat import caller_frames
from .._engines.make import core
from .._engines.observe import PoolObserver, observe
from .._topology.topology import Topology

__all__ = ["StarvationDetector", "locate_caller"]

logger = logging.getLogger("routing_db.starvation")

# Frames in these places are plumbing, not the caller worth naming.
_PLUMBING = (
    "/sqlalchemy/",
    "/asyncio/",
    "/greenlet/",
    "/contextlib.py",
    "/routing_db/_",
    "/routing_db/loadtest/_",
    "/site-packages/pytest_asyncio/",
)


def locate_caller() -> str | None:
    """``file:line in function`` of the first frame outside SQLAlchemy and us."""
    for frame in caller_frames():
        filename = frame.f_code.co_filename
        generated = filename.startswith("<")  # SQLAlchemy's generated wrappers
        if not generated and not any(part in filename for part in _PLUMBING):
            return f"{filename}:{frame.f_lineno} in {frame.f_code.co_name}"
    return None


class StarvationDetector:
    """Warns (log and router event) about long holds and long checkout waits."""

    def __init__(
        self,
        topology: Topology,
        *,
        hold_warning_seconds: float | None,
        wait_warning_fraction: float | None,
    ) -> None:
        self._listeners = topology.listeners
        self.hold_warning_seconds = hold_warning_seconds
        self.wait_warning_fraction = wait_warning_fraction
        self._warned: set[tuple[str, int]] = set()
        self.observers: list[PoolObserver] = []
        self._timeouts: dict[str, float] = {}
        for name, engine in topology.engines():
            observer = observe(engine, name)
            if hold_warning_seconds is not None:
                observer.locate = locate_caller
            observer.subscribe(self)
            self.observers.append(observer)
            timeout = getattr(core(engine).pool, "timeout", None)
            self._timeouts[name] = float(timeout()) if callable(timeout) else 30.0

    def waited(self, name: str, seconds: float, timed_out: bool) -> None:
        """Warn when a checkout waited more than the set part of pool_timeout."""
        fraction = self.wait_warning_fraction
        if fraction is None or seconds <= fraction * self._timeouts[name]:
            return
        logger.warning(
            "checkout on %s waited %.2f s (pool_timeout %.1f s)%s: "
            "the pool is too small for the load or connections are held too long",
            name,
            seconds,
            self._timeouts[name],
            " and timed out" if timed_out else "",
        )
        self._listeners.emit("starved", name, "checkout_wait")

    def held(self, name: str, seconds: float, where: str | None) -> None:
        """Warn when a connection comes back after more than the threshold."""
        limit = self.hold_warning_seconds
        if limit is None or seconds <= limit:
            return
        self._warn_hold(name, seconds, where, "was held")

    def scan(self) -> None:
        """Warn once about each connection held past the threshold right now."""
        limit = self.hold_warning_seconds
        if limit is None:
            return
        still_out: set[tuple[str, int]] = set()
        for observer in self.observers:
            for key, age, where in observer.held_longer_than(limit):
                mark = (observer.name, key)
                still_out.add(mark)
                if mark not in self._warned:
                    self._warn_hold(observer.name, age, where, "is held")
        self._warned = still_out

    def _warn_hold(
        self, name: str, seconds: float, where: str | None, verb: str
    ) -> None:
        logger.warning(
            "a connection to %s %s for %.2f s (hold_warning_seconds "
            "%.2f), checked out at %s: keep sessions short around awaits",
            name,
            verb,
            seconds,
            self.hold_warning_seconds,
            where or "an unknown place",
        )
        self._listeners.emit("starved", name, "hold")

    def close(self) -> None:
        """Stop listening."""
        for observer in self.observers:
            observer.unsubscribe(self)
            observer.locate = None
