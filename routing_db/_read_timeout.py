"""``replica_read_timeout``: a replica statement on a host that stopped answering.

Such a statement would otherwise wait as long as the host stays stopped, or
for the kernel's TCP timeout. Each driver is bounded where it offers a way:
asyncpg's ``command_timeout`` and asyncmy's ``read_timeout``; for psycopg and
aiomysql, a connection class whose statements and transaction ends are cut
by a timer. Past the bound the connection is discarded at once and the
statement raises ``ReplicaReadTimeout``.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import weakref
from collections.abc import Callable, Iterator
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from ._connections import cut
from ._exceptions import ReplicaReadTimeout
from ._hooks import Hooks
from ._sa_compat import aiomysql_open, asyncpg_cancel_requests

__all__ = ["install_read_timeout"]

# Driver connections whose statement ran past the bound: the error their
# statement then raises (a lost connection) is the timeout's.
_expired: weakref.WeakSet[Any] = weakref.WeakSet()
_cancels: set[asyncio.Future[Any]] = set()


def _keep(task: asyncio.Future[Any]) -> None:
    _cancels.add(task)
    task.add_done_callback(_cancels.discard)


def _expire(connection: Any, seconds: float) -> None:
    _expired.add(connection)
    if hasattr(connection, "cancel_safe"):  # psycopg
        # The server may only be slow: it is asked to cancel the statement
        # (over a new connection, in the background); this one is cut at
        # once, since a server that stopped would answer neither.
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


def _asyncpg(seconds: float) -> dict[str, Any]:
    # asyncpg's own bound: it cancels the statement on the server and raises
    # TimeoutError, which is not a DBAPI error (see timed_out below).
    return {"command_timeout": seconds}


def _asyncmy(seconds: float) -> dict[str, Any]:
    # Per read from the socket: a result that keeps coming is not cut.
    return {"read_timeout": seconds}


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


def _aiomysql(seconds: float) -> dict[str, Any]:
    aiomysql = importlib.import_module("aiomysql")

    # Every cursor's statement goes through query(); COMMIT and ROLLBACK not.
    class BoundedConnection(aiomysql.Connection):  # type: ignore[misc,name-defined]
        async def query(self, *args: Any, **kw: Any) -> Any:
            with _deadline(self, seconds):
                return await super().query(*args, **kw)

        async def commit(self) -> None:
            with _deadline(self, seconds):
                await super().commit()

        async def rollback(self) -> None:
            with _deadline(self, seconds):
                await super().rollback()

    async def connect(**kwargs: Any) -> Any:
        return await aiomysql_open(BoundedConnection(**kwargs))

    return {"async_creator_fn": connect}


_READ_TIMEOUT: dict[str, Callable[[float], dict[str, Any]]] = {
    "asyncpg": _asyncpg,
    "psycopg": _psycopg,
    "psycopg_async": _psycopg,
    "aiomysql": _aiomysql,
    "asyncmy": _asyncmy,
}


def _timed_out(driver_connection: Any, error: BaseException) -> bool:
    if driver_connection in _expired:
        _expired.discard(driver_connection)
        return True
    # asyncpg's command_timeout; asyncmy's read_timeout (it closed the socket).
    return isinstance(error, TimeoutError) or "(read timeout)" in str(error)


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

    def translate(context: Any) -> BaseException | None:
        connection = context.connection
        if connection is None or connection.invalidated:
            return None  # connecting: connect_timeout's, not ours
        driver_connection = connection.connection.driver_connection
        error = context.original_exception
        if not _timed_out(driver_connection, error):
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
