"""Misuse we can see: routers over the same URLs opened over and over.

A router made per request (or per job) opens its own pools and monitor each
time; nothing fails until the database runs out of connections. Routers are
counted from construction (or ``start()`` after ``dispose()``) until
``dispose()``: a router dropped without ``dispose()`` stays counted, since its
connections stay open until the garbage collector closes them uncleanly.
"""

from __future__ import annotations

import inspect
import os
import threading
import warnings
from collections import Counter

from .._exceptions import RoutingDBWarning

__all__ = ["OPENINGS", "OPEN_ROUTERS_WARNING", "Openings"]

# Open at once over the same URLs before we say so. An application needs one
# (a few with several event loops or processes' worth of threads); a test
# suite that disposes its routers never gets near it.
OPEN_ROUTERS_WARNING = 10

# routing_db itself (this module sits in routing_db/_decide/).
_PACKAGE = os.path.dirname(os.path.dirname(__file__))


class Openings:
    """How many routers over each set of URLs are open, process-wide."""

    def __init__(self, limit: int = OPEN_ROUTERS_WARNING) -> None:
        self.limit = limit
        self._open: Counter[tuple[str, ...]] = Counter()
        self._warned: set[tuple[str, ...]] = set()
        self._lock = threading.Lock()  # routers of the sync face are made in threads

    def opened(self, urls: tuple[str, ...]) -> None:
        """A router over ``urls`` (passwords masked) was made or restarted."""
        with self._lock:
            self._open[urls] += 1
            if self._open[urls] < self.limit or urls in self._warned:
                return
            self._warned.add(urls)
        warnings.warn(
            f"routing_db: {self.limit} routers over {', '.join(urls)} are open "
            "at once in this process, each with its own pools and monitor. "
            "Create one Router when the application starts (e.g. in its "
            "lifespan), share it, and dispose() it at shutdown.",
            RoutingDBWarning,
            stacklevel=_caller_level(),
        )

    def closed(self, urls: tuple[str, ...]) -> None:
        """A router over ``urls`` was disposed."""
        with self._lock:
            self._open[urls] -= 1
            if self._open[urls] <= 0:
                del self._open[urls]


def _caller_level() -> int:
    """The ``stacklevel`` of the first frame outside routing_db."""
    here = inspect.currentframe()
    frame, level = None if here is None else here.f_back, 1
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE):
        frame, level = frame.f_back, level + 1
    return level


OPENINGS = Openings()
