"""``replica_read_timeout`` on asyncio: a replica statement on a host that
stopped answering.

Such a statement would otherwise wait as long as the host stays stopped, or
for the kernel's TCP timeout. The policy is ``past_bound``'s; this face
drives it with a timer per event loop, owned by the router (``Watchdog``).
Nothing is armed per statement: a timer each (asyncpg's ``command_timeout``
included) cost some 4 to 5% of a replica select, measured.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import Callable
from typing import Any

from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from .._backends.registry import backend_for
from .._engines.hooks import Hooks
from .connect import MONITOR_PROBING, checked_within
from .past_bound import ReadBound, swept, timeout_translator

__all__ = ["Watchdog", "install_read_timeout"]

logger = logging.getLogger("routing_db")


class _Loop:
    """The watched connections of one event loop, swept by its timer."""

    def __init__(self) -> None:
        self.connections: weakref.WeakSet[Any] = weakref.WeakSet()
        self.interval = 1.0
        self.scheduled = False  # (not the handle: it holds the loop)


class Watchdog:
    """A router's asyncio read bounds: each event loop's watched connections,
    swept by a timer on that loop, and the cancels it started. Closed with
    the router's hooks: no timer is scheduled again."""

    def __init__(self) -> None:
        # Weakly: an application's tests run a loop each, none may be kept.
        self._loops: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Loop] = (
            weakref.WeakKeyDictionary()
        )
        self._cancels: set[asyncio.Future[Any]] = set()
        self._closed = False

    def watch(self, connection: Any, interval: float) -> None:
        """Sweep ``connection`` (made on the running loop) from now on."""
        loop = asyncio.get_running_loop()
        watched = self._loops.get(loop)
        if watched is None:
            watched = self._loops[loop] = _Loop()
        watched.connections.add(connection)
        watched.interval = min(watched.interval, interval)
        if not watched.scheduled:
            self._schedule(weakref.ref(loop))

    def spawn(self, cancel: Any) -> None:
        """Run ``cancel`` (a coroutine) in the background, held until done."""
        task = asyncio.ensure_future(cancel)
        self._cancels.add(task)
        task.add_done_callback(self._cancels.discard)

    def close(self) -> None:
        """Stop sweeping (each loop's timer ends at its next turn)."""
        self._closed = True

    def _schedule(self, loop_ref: weakref.ref[asyncio.AbstractEventLoop]) -> None:
        loop = loop_ref()
        watched = None if loop is None else self._loops.get(loop)
        if loop is None or watched is None or loop.is_closed() or self._closed:
            return
        watched.scheduled = True
        loop.call_later(watched.interval, self._sweep, loop_ref)

    def _sweep(self, loop_ref: weakref.ref[asyncio.AbstractEventLoop]) -> None:
        loop = loop_ref()
        watched = None if loop is None else self._loops.get(loop)
        if watched is None:
            return
        watched.scheduled = False
        swept(list(watched.connections), time.monotonic())
        if watched.connections:
            self._schedule(loop_ref)


def install_read_timeout(
    engine: AsyncEngine,
    hooks: Hooks,
    seconds: float,
    *,
    timed_out: Callable[[BaseException], None],
) -> None:
    """Bound each statement on ``engine`` (a replica) to ``seconds``: past it,
    the statement is cancelled, its connection discarded, ``timed_out`` called
    and ``ReplicaReadTimeout`` raised. Arguments in ``connect_args`` win."""
    backend = backend_for(engine.dialect.name)
    if backend is None:
        return
    watchdog = hooks.worker("read timeout", Watchdog)

    def cancel(statement: str) -> None:
        watchdog.spawn(_cancelled(engine, statement, seconds))

    bound = ReadBound(seconds, watcher=watchdog, cancel=cancel, timed_out=timed_out)
    bounded = backend.read_timeout(engine.dialect.driver, bound, is_async=True)
    if bounded is None:
        return  # SQLite: no network

    def with_bound(
        dialect: Any, record: Any, cargs: Any, cparams: dict[str, Any]
    ) -> None:
        for key, value in bounded.arguments.items():
            cparams.setdefault(key, value)

    hooks.listen(engine.sync_engine, "do_connect", with_bound)
    hooks.listen(engine.sync_engine, "handle_error", timeout_translator(seconds))


async def _cancelled(engine: AsyncEngine, statement: str, seconds: float) -> None:
    # An ejected replica takes only the monitor's connections: this is one
    # of those (and bounded, should the server not answer).
    probing = MONITOR_PROBING.set(True)
    try:
        await checked_within(
            engine, Connection.exec_driver_sql, statement, seconds=seconds
        )
    except Exception as exc:  # the connection is cut anyway
        logger.debug("cancelling a replica statement: %r", exc)
    finally:
        MONITOR_PROBING.reset(probing)
