"""``replica_read_timeout``: a replica statement on a host that stopped answering.

Such a statement would otherwise wait as long as the host stays stopped, or
for the kernel's TCP timeout. Each driver's connections are of a class of
routing_db's that marks when a statement (or a transaction's end) starts
and ends; a watchdog per event loop looks every tenth of the bound and cuts
the socket of a connection whose statement has run past it. Nothing is
armed per statement: a timer each (asyncpg's ``command_timeout`` included)
cost some 4 to 5% of a replica select, measured. Past the bound the server
is asked to stop the statement (over another connection, in the
background), the connection is discarded at once and the statement raises
``ReplicaReadTimeout``.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import time
import weakref
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from .._backends.connections import cut
from .._compat import aiomysql_open
from .._engines.hooks import Hooks
from .connect import MONITOR_PROBING, checked_within
from .past_bound import CANCEL, backend_id, expired, timeout_error, timeout_translator

__all__ = [
    "expired",
    "install_read_timeout",
    "timeout_translator",
]

logger = logging.getLogger("routing_db")

T = TypeVar("T")

_cancels: set[asyncio.Future[Any]] = set()


def _expire(connection: Any, seconds: float) -> None:
    expired.add(connection)
    reactions = _reactions.get(connection)
    if reactions is None:
        cut(connection)
        return
    cancel, timed_out = reactions
    # Ejected now, whatever was running (a statement, the pool's ping or
    # ROLLBACK): no new work goes to the host meanwhile.
    timed_out(timeout_error(seconds))
    # The server may only be slow: it is asked to stop the statement (over
    # another connection, in the background); this one is cut at once, since
    # a server that stopped would answer neither.
    backend = backend_id(connection)
    if backend is not None:
        task = asyncio.ensure_future(cancel(backend))
        _cancels.add(task)
        task.add_done_callback(_cancels.discard)
    cut(connection)


# Driver connection -> how to cancel its statement on the server, and whom
# to tell that it timed out (its replica is ejected).
_reactions: weakref.WeakKeyDictionary[
    Any, tuple[Callable[[int], Awaitable[None]], Callable[[BaseException], None]]
] = weakref.WeakKeyDictionary()


def _canceller(engine: AsyncEngine, seconds: float) -> Callable[[int], Awaitable[None]]:
    statement = CANCEL[engine.dialect.name]

    async def cancel(backend: int) -> None:
        # An ejected replica takes only the monitor's connections: this is
        # one of those (and bounded, should the server not answer).
        probing = MONITOR_PROBING.set(True)
        try:
            await checked_within(
                engine, Connection.exec_driver_sql, statement.format(backend),
                seconds=seconds,
            )  # fmt: skip
        except Exception as exc:  # the connection is cut anyway
            logger.debug("routing_db: cancelling a replica statement: %r", exc)
        finally:
            MONITOR_PROBING.reset(probing)

    return cancel


class _Watchdog:
    """The watched connections of one event loop, looked at periodically."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        # Weakly: _watchdogs is keyed by the loop, which must not be kept.
        self._loop = weakref.ref(loop)
        self._bounds: weakref.WeakKeyDictionary[Any, float] = (
            weakref.WeakKeyDictionary()
        )
        self._interval = 1.0
        self._scheduled = False  # (not the handle: it holds the loop)

    def watch(self, connection: Any, seconds: float) -> None:
        self._bounds[connection] = seconds
        # A statement is cut between 1 and 1.1 times the bound after it began.
        self._interval = min(self._interval, max(0.05, seconds / 10))
        if not self._scheduled:
            self._schedule()

    def _schedule(self) -> None:
        loop = self._loop()
        self._scheduled = loop is not None and not loop.is_closed()
        if loop is not None and self._scheduled:
            loop.call_later(self._interval, self._sweep)

    def _sweep(self) -> None:
        self._scheduled = False
        now = time.monotonic()
        for connection, seconds in list(self._bounds.items()):
            since = connection.routing_db_since
            if since is not None and now - since > seconds:
                connection.routing_db_since = None  # cut once
                _expire(connection, seconds)
        if self._bounds:
            self._schedule()


_watchdogs: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Watchdog] = (
    weakref.WeakKeyDictionary()
)


class _Running:
    """``with connection.routing_db_running:`` around a statement, so the
    watchdog knows since when it runs (one per connection: nothing is made
    per statement)."""

    __slots__ = ("_connection",)

    def __init__(self, connection: _Watched) -> None:
        self._connection = connection

    def __enter__(self) -> None:
        self._connection.routing_db_since = time.monotonic()

    def __exit__(self, *exc_info: object) -> None:
        self._connection.routing_db_since = None


class _Watched:
    """Mixed into a driver's connection class: what the watchdog reads."""

    routing_db_bound: float = 0.0  # set by each bounded class
    routing_db_since: float | None = None  # when the running statement began

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.routing_db_running = _Running(self)
        loop = asyncio.get_running_loop()
        watchdog = _watchdogs.get(loop)
        if watchdog is None:
            watchdog = _watchdogs[loop] = _Watchdog(loop)
        watchdog.watch(self, self.routing_db_bound)


class _WatchedEnds(_Watched):
    """For drivers that end a transaction on the connection (not through a
    cursor): COMMIT and ROLLBACK are watched too."""

    async def commit(self) -> None:
        with self.routing_db_running:
            await super().commit()  # type: ignore[misc]

    async def rollback(self) -> None:
        with self.routing_db_running:
            await super().rollback()  # type: ignore[misc]


def _asyncpg(seconds: float) -> dict[str, Any]:
    from asyncpg import Connection

    class BoundedStatement:
        """asyncpg's prepared statement, its ``fetch()`` (which SQLAlchemy
        runs each statement with) watched."""

        __slots__ = ("_connection", "_statement")

        def __init__(self, statement: Any, connection: Any) -> None:
            self._statement = statement
            self._connection = connection

        async def fetch(self, *args: Any, **kw: Any) -> Any:
            with self._connection.routing_db_running:
                return await self._statement.fetch(*args, **kw)

        def get_statusmsg(self) -> Any:  # after each fetch: not by __getattr__
            return self._statement.get_statusmsg()

        def __getattr__(self, name: str) -> Any:
            return getattr(self._statement, name)

    class BoundedConnection(_Watched, Connection):  # type: ignore[misc]
        routing_db_bound = seconds

        async def prepare(self, *args: Any, **kw: Any) -> Any:
            with self.routing_db_running:
                statement = await super().prepare(*args, **kw)
            return BoundedStatement(statement, self)

        # asyncpg's Transaction runs BEGIN, COMMIT and ROLLBACK here.
        async def execute(self, *args: Any, **kw: Any) -> Any:
            with self.routing_db_running:
                return await super().execute(*args, **kw)

        # SQLAlchemy's ping at checkout (fetchrow), routing_db's replay
        # position (fetchval): not through prepare().
        async def fetchrow(self, *args: Any, **kw: Any) -> Any:
            with self.routing_db_running:
                return await super().fetchrow(*args, **kw)

        async def fetchval(self, *args: Any, **kw: Any) -> Any:
            with self.routing_db_running:
                return await super().fetchval(*args, **kw)

    return {"connection_class": BoundedConnection}


def _psycopg(seconds: float) -> dict[str, Any]:
    from psycopg import AsyncConnection, AsyncCursor

    class BoundedCursor(AsyncCursor[Any]):
        async def execute(self, *args: Any, **kw: Any) -> Any:
            connection: Any = self.connection
            with connection.routing_db_running:
                return await super().execute(*args, **kw)

    class BoundedConnection(_WatchedEnds, AsyncConnection[Any]):
        routing_db_bound = seconds

    return {
        "async_creator_fn": BoundedConnection.connect,
        "cursor_factory": BoundedCursor,
    }


def _mysql(module: str) -> Callable[[float], dict[str, Any]]:
    def arguments(seconds: float) -> dict[str, Any]:
        base = importlib.import_module(module).Connection

        # Every cursor's statement goes through query().
        class BoundedConnection(_WatchedEnds, base):  # type: ignore[misc,valid-type]
            routing_db_bound = seconds

            async def query(self, *args: Any, **kw: Any) -> Any:
                with self.routing_db_running:
                    return await super().query(*args, **kw)

            # SQLAlchemy's ping at checkout: COM_PING, not a query.
            async def ping(self, *args: Any, **kw: Any) -> Any:
                with self.routing_db_running:
                    return await super().ping(*args, **kw)

        async def connect(**kwargs: Any) -> Any:
            connection = BoundedConnection(**kwargs)
            if module == "aiomysql":
                return await aiomysql_open(connection)
            await connection.connect()  # what asyncmy.connect() does
            return connection

        return {"async_creator_fn": connect}

    return arguments


_READ_TIMEOUT: dict[str, Callable[[float], dict[str, Any]]] = {
    "asyncpg": _asyncpg,
    "psycopg": _psycopg,
    "psycopg_async": _psycopg,
    "aiomysql": _mysql("aiomysql"),
    "asyncmy": _mysql("asyncmy"),
}


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
    arguments = _READ_TIMEOUT.get(engine.dialect.driver)
    if arguments is None:
        return  # SQLite: no network
    bound = arguments(seconds)

    def bounded(dialect: Any, record: Any, cargs: Any, cparams: dict[str, Any]) -> None:
        for key, value in bound.items():
            cparams.setdefault(key, value)

    translate = timeout_translator(seconds)
    cancel = _canceller(engine, seconds)

    def connected(dbapi_connection: Any, record: Any) -> None:
        _reactions[dbapi_connection.driver_connection] = (cancel, timed_out)

    hooks.listen(engine.sync_engine, "do_connect", bounded)
    hooks.listen(engine.sync_engine, "connect", connected)
    hooks.listen(engine.sync_engine, "handle_error", translate)
