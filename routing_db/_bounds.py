"""Client-side bounds on a server that does not answer (a hung or unreachable host).

A connection attempt to a host that accepts and never answers, or never
accepts, would otherwise wait for the driver's own default (asyncpg: 60 s)
or the kernel's TCP timeout; a statement sent to a host that stopped, for
as long as the host stays stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import importlib
import math
import weakref
from collections.abc import Callable, Iterator
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from ._connections import cut
from ._exceptions import ReplicaReadTimeout
from ._hooks import Hooks
from ._sa_compat import asyncpg_cancel_requests, bounded_creator

__all__ = [
    "MONITOR_PROBING",
    "ReplicaEjected",
    "install_connect_guard",
    "install_connect_timeout",
    "install_read_timeout",
]

# Set by the monitor's task: its connections to an ejected replica are the
# probes that bring it back.
MONITOR_PROBING: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "routing_db_monitor_probing", default=False
)


class ReplicaEjected(ConnectionError):
    """A read was about to open a connection to an ejected replica."""


def install_connect_guard(
    engine: AsyncEngine, hooks: Hooks, may_connect: Callable[[], bool]
) -> None:
    """No new connection to ``engine`` (a replica) while it is ejected, but
    the monitor's probes: a read waiting in its pool when it was ejected
    would otherwise pay connect_timeout on a host that hangs."""

    def guard(dialect: Any, record: Any, cargs: Any, cparams: Any) -> None:
        if not (may_connect() or MONITOR_PROBING.get()):
            raise ReplicaEjected(f"{engine.url.host}:{engine.url.port} is ejected")

    hooks.listen(engine.sync_engine, "do_connect", guard)


def _asyncpg(seconds: float) -> dict[str, Any]:
    return {"timeout": seconds}  # the whole connect, startup included


def _libpq(seconds: float) -> dict[str, Any]:
    # libpq takes whole seconds, and treats less than 2 as 2.
    return {"connect_timeout": max(2, math.ceil(seconds))}


def _mysql(module: str) -> Callable[[float], dict[str, Any]]:
    # Their connect_timeout covers the TCP connect only: a host that accepts
    # and never sends its greeting would hold the connect for ever.
    def arguments(seconds: float) -> dict[str, Any]:
        connect = importlib.import_module(module).connect
        return {"connect_timeout": seconds, **bounded_creator(connect, seconds)}

    return arguments


_CONNECT_TIMEOUT: dict[str, Callable[[float], dict[str, Any]]] = {
    "asyncpg": _asyncpg,
    "psycopg": _libpq,
    "psycopg_async": _libpq,
    "aiomysql": _mysql("aiomysql"),
    "asyncmy": _mysql("asyncmy"),
}


def install_connect_timeout(engine: AsyncEngine, hooks: Hooks, seconds: float) -> None:
    """Bound each new connection of ``engine`` to ``seconds``, unless its
    ``connect_args`` (or URL) set the driver's own timeout already."""
    arguments = _CONNECT_TIMEOUT.get(engine.dialect.driver)
    if arguments is None:
        return  # SQLite: no network
    bound = arguments(seconds)

    def bounded(dialect: Any, record: Any, cargs: Any, cparams: dict[str, Any]) -> None:
        for key, value in bound.items():
            cparams.setdefault(key, value)

    hooks.listen(engine.sync_engine, "do_connect", bounded)


# Driver connections whose statement ran past the bound: the error their
# statement then raises (a lost connection) is the timeout's.
_expired: weakref.WeakSet[Any] = weakref.WeakSet()
_cancels: set[asyncio.Future[None]] = set()


def _expire(connection: Any, seconds: float) -> None:
    _expired.add(connection)
    # The server may only be slow: it is asked to cancel the statement (over
    # a new connection, in the background); this one is cut at once, since a
    # server that stopped would answer neither.
    _keep(asyncio.ensure_future(_cancel(connection, seconds)))
    cut(connection)


async def _cancel(connection: Any, seconds: float) -> None:
    with contextlib.suppress(Exception):
        await connection.cancel_safe(timeout=seconds)


@contextlib.contextmanager
def _deadline(connection: Any, seconds: float) -> Iterator[None]:
    timer = asyncio.get_running_loop().call_later(seconds, _expire, connection, seconds)
    try:
        yield
    finally:
        timer.cancel()


def _keep(task: asyncio.Future[Any]) -> None:
    _cancels.add(task)
    task.add_done_callback(_cancels.discard)


def _discard(driver_connection: Any) -> None:
    # At once: SQLAlchemy closes an invalidated connection gracefully, which
    # waits on a server that does not answer (asyncpg: for its cancel too).
    terminate = getattr(driver_connection, "terminate", None)
    if callable(terminate):  # asyncpg; its cancel request goes on
        for request in asyncpg_cancel_requests(driver_connection):
            _keep(request)
        terminate()
    else:
        cut(driver_connection)


def _psycopg(seconds: float) -> dict[str, Any]:
    from psycopg import AsyncConnection, AsyncCursor

    class BoundedCursor(AsyncCursor[Any]):
        async def execute(self, *args: Any, **kw: Any) -> Any:
            with _deadline(self.connection, seconds):
                return await super().execute(*args, **kw)

    # psycopg ends a transaction on the connection, not through a cursor.
    class BoundedConnection(AsyncConnection[Any]):
        async def commit(self) -> None:
            with _deadline(self, seconds):
                await super().commit()

        async def rollback(self) -> None:
            with _deadline(self, seconds):
                await super().rollback()

    return {
        "async_creator_fn": BoundedConnection.connect,
        "cursor_factory": BoundedCursor,
    }


def _asyncpg_read(seconds: float) -> dict[str, Any]:
    # asyncpg's own bound: it cancels the statement on the server and raises
    # TimeoutError, which is not a DBAPI error (see below).
    return {"command_timeout": seconds}


_READ_TIMEOUT: dict[str, Callable[[float], dict[str, Any]]] = {
    "asyncpg": _asyncpg_read,
    "psycopg": _psycopg,
    "psycopg_async": _psycopg,
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
        return  # SQLite; MySQL drivers: not bounded yet
    bound = arguments(seconds)

    def bounded(dialect: Any, record: Any, cargs: Any, cparams: dict[str, Any]) -> None:
        for key, value in bound.items():
            cparams.setdefault(key, value)

    def translate(context: Any) -> BaseException | None:
        connection = context.connection
        if connection is None or connection.invalidated:
            return None  # connecting: connect_timeout's, not ours
        error = context.original_exception
        driver_connection = connection.connection.driver_connection
        if driver_connection in _expired:
            _expired.discard(driver_connection)
        elif not isinstance(error, TimeoutError):
            return None
        _discard(driver_connection)
        context.is_disconnect = True
        timeout = ReplicaReadTimeout(
            context.statement, context.parameters, error, connection_invalidated=True
        )
        timeout.args = (
            f"a replica read took longer than replica_read_timeout ({seconds:g} s): "
            "it was cancelled and its connection discarded",
        )
        timed_out(timeout)
        return timeout

    hooks.listen(engine.sync_engine, "do_connect", bounded)
    hooks.listen(engine.sync_engine, "handle_error", translate)
