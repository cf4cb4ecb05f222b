"""Every private attribute of SQLAlchemy, greenlet and the drivers that we use.

Nothing else in routing_db reaches past a public API. ``INTERNALS`` lists each
access with the reason it is needed; ``tests/test_compat.py`` probes the
shape of every one on the installed versions (CI runs SQLAlchemy 2.0 and 2.1),
so an upgrade that changes one fails there, by name, and the docs' list is
generated from ``INTERNALS``.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from types import FrameType
from typing import Any

from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session, SessionTransaction
from sqlalchemy.sql.selectable import GenerativeSelect, Select
from sqlalchemy.util import await_only
from sqlalchemy.util.concurrency import in_greenlet

__all__ = [
    "INTERNALS",
    "aiomysql_open",
    "asyncpg_socket",
    "caller_frames",
    "detach",
    "for_update",
    "held",
    "idle",
    "innermost_transaction",
    "max_overflow",
    "mysql_socket",
    "mysql_transport",
    "on_connect_isolation_level",
    "pause",
    "rewind_close",
    "run_io",
    "select_list",
    "unwrap_pool_connect",
    "wrap_creator",
    "wrap_pool_connect",
]

INTERNALS: Mapping[str, str] = {
    "SessionTransaction._connections": (
        "the connections a session's transaction holds: which replica and "
        "writer connections it has, and whether a statement is its first; "
        "one replica connection is detached from it when its read-only "
        "transaction ends before the writer's COMMIT, or failed on the first "
        "statement and is replaced (Session has no public way to let go of "
        "one connection)"
    ),
    "SessionTransaction._parent": (
        "walked with _connections, from a subtransaction to its root"
    ),
    "Session._transaction": (
        "read to find the innermost transaction; written once, after close() "
        "stopped part way at a dead replica, so that closing again finishes"
    ),
    "SessionTransaction._transaction_is_closed()": (
        "which transactions close() already closed before it stopped"
    ),
    "GenerativeSelect._for_update_arg": (
        "FOR UPDATE/SHARE sends a SELECT to the writer (a standby refuses it)"
    ),
    "Select._raw_columns": (
        "the select list, searched for nextval() and lock functions"
    ),
    "QueuePool._max_overflow": (
        "a pool's capacity (pool_size + max_overflow) in status() and metrics, "
        "and whether the monitor's check waits only for a full pool"
    ),
    "Pool.connect, replaced per pool instance": (
        "a clock around checkout, for waits and timeouts (no pool event "
        "fires before a checkout waits)"
    ),
    "greenlet.gr_frame and sys._getframe": (
        "the application's frame that checked a connection out: it is on "
        "the greenlet that started SQLAlchemy's, not on SQLAlchemy's own"
    ),
    "async_creator_fn of the asyncio DBAPI adapters' connect()": (
        "a driver connect wrapped in a timeout (aiomysql and asyncmy bound "
        "only the TCP connect); create_async_engine's async_creator passes it"
    ),
    "aiomysql Connection._writer, asyncmy Connection._transport, "
    "pymysql Connection._sock": (
        "the socket of a MySQL connection: shut down to cut a transaction "
        "still open on a replica removed after drain_timeout; checked at "
        "checkout for the server's goodbye (the driver notices it only when "
        "a statement sent on it fails)"
    ),
    "async_creator_fn and cursor_factory of psycopg's AsyncConnection.connect": (
        "a psycopg connection (and its cursors) whose statements and "
        "transaction ends are bounded by replica_read_timeout"
    ),
    "aiomysql Connection._connect()": (
        "opens a connection of a subclass whose statements and transaction "
        "ends are bounded by replica_read_timeout (aiomysql.connect() makes "
        "only its own class)"
    ),
    "asyncpg Connection._transport": (
        "the socket of an idle pooled connection, checked for the server's "
        "goodbye that asyncpg has not acted on yet"
    ),
    "DefaultDialect._on_connect_isolation_level": (
        "the isolation level create_engine(isolation_level=) gives every new "
        "connection: in AUTOCOMMIT each statement commits on its own, with no "
        "COMMIT for the writer's position to be recorded after (a connection's "
        "own level is in its public execution options)"
    ),
    "sqlalchemy.util.concurrency.in_greenlet": (
        "whether SQLAlchemy's sync layer runs on an event loop (asyncio "
        "sessions) or in a thread (sync sessions): a retry's backoff or a "
        "wait for a replica sleeps in the event loop there, in the thread here"
    ),
}


def on_connect_isolation_level(dialect: Any) -> str | None:
    """The isolation level ``create_engine(isolation_level=)`` gave ``dialect``."""
    level: str | None = dialect._on_connect_isolation_level
    return level


def run_io(coroutine: Callable[[], Any], blocking: Callable[[], Any]) -> Any:
    """``coroutine()`` awaited where an event loop runs this sync code (in
    SQLAlchemy's greenlet), else ``blocking()``."""
    if in_greenlet():
        return await_only(coroutine())
    return blocking()


def pause(seconds: float) -> None:
    """Sleep without blocking an event loop that runs this sync code."""
    if in_greenlet():
        await_only(asyncio.sleep(seconds))
    else:
        time.sleep(seconds)


# -- a session's transactions and connections ------------------------------


def innermost_transaction(session: Session) -> SessionTransaction | None:
    """The session's current transaction, a subtransaction or savepoint too."""
    return session._transaction


def _root(transaction: SessionTransaction) -> SessionTransaction:
    while transaction._parent is not None:
        transaction = transaction._parent
    return transaction


def held(transaction: SessionTransaction | None, bind: Any) -> Connection | None:
    """The connection ``transaction``'s root transaction holds for ``bind``."""
    if transaction is None or bind is None:
        return None
    entry = _root(transaction)._connections.get(bind)
    return entry[0] if entry else None


def idle(transaction: SessionTransaction | None) -> bool:
    """Has no connection begun in ``transaction``'s root transaction yet?"""
    return transaction is None or not _root(transaction)._connections


def detach(session: Session, connection: Connection) -> None:
    """Detach ``connection`` from every transaction of the session, as if it
    had never been opened there (it stays open: the caller closes it)."""
    transaction = session._transaction
    while transaction is not None:
        transaction._connections.pop(connection, None)
        transaction._connections.pop(connection.engine, None)
        transaction = transaction._parent


def rewind_close(session: Session, transaction: SessionTransaction | None) -> None:
    """After ``session.close()`` stopped part way through ``transaction`` and
    its parents, point the session back at the innermost one left unclosed,
    so that closing again finishes the rest."""
    while transaction is not None and transaction._transaction_is_closed():
        transaction = transaction._parent
    session._transaction = transaction


# -- statements --------------------------------------------------------------


def for_update(select: GenerativeSelect) -> bool:
    """Does ``select`` lock rows (FOR UPDATE / FOR SHARE)?"""
    return select._for_update_arg is not None


def select_list(select: Select[Any]) -> Any:
    """The column expressions ``select`` was made with, as given."""
    return select._raw_columns


# -- pools -------------------------------------------------------------------


def max_overflow(pool: Any) -> int:
    """A queue pool's ``max_overflow`` (0 for pools without one)."""
    return int(getattr(pool, "_max_overflow", 0))


def wrap_pool_connect(pool: Any, wrap: Callable[[Callable[[], Any]], Any]) -> None:
    """Replace ``pool.connect`` on this instance only by ``wrap(connect)``."""
    # Per instance, on purpose: engines made by the caller keep their own
    # pool class; the wrapper only adds a clock around connect().
    pool.connect = wrap(type(pool).connect.__get__(pool))


def unwrap_pool_connect(pool: Any) -> None:
    """Undo ``wrap_pool_connect``: the pool's class's ``connect`` again."""
    pool.__dict__.pop("connect", None)


# -- frames and sockets ------------------------------------------------------


def caller_frames() -> Iterator[FrameType]:
    """The frames below the caller, then those of each parent greenlet."""
    frame: FrameType | None = sys._getframe(2)
    try:
        import greenlet

        parent = greenlet.getcurrent().parent
    except ImportError:  # pragma: no cover - SQLAlchemy asyncio needs greenlet
        parent = None
    while True:
        while frame is not None:
            yield frame
            frame = frame.f_back
        # The application's coroutine frames are on the greenlet that
        # started SQLAlchemy's (the event loop's), not on this one.
        if parent is None or parent.gr_frame is None:
            return
        frame, parent = parent.gr_frame, parent.parent


def asyncpg_socket(driver_connection: Any) -> int | None:
    """The file descriptor of an asyncpg connection's socket, if it has one."""
    transport = getattr(driver_connection, "_transport", None)
    sock = None if transport is None else transport.get_extra_info("socket")
    if sock is None or sock.fileno() < 0:
        return None
    return int(sock.fileno())


async def aiomysql_open(connection: Any) -> Any:
    """Open an aiomysql connection made by its class, as ``aiomysql.connect``."""
    await connection._connect()
    return connection


def mysql_transport(driver_connection: Any) -> Any:
    """The asyncio transport of an asyncmy or aiomysql connection, if it has one."""
    transport = getattr(driver_connection, "_transport", None)  # asyncmy
    if transport is None:
        writer = getattr(driver_connection, "_writer", None)  # aiomysql
        transport = getattr(writer, "transport", None)
    return transport


def mysql_socket(driver_connection: Any) -> int | None:
    """The file descriptor of an aiomysql, asyncmy or pymysql connection's socket."""
    sock = getattr(driver_connection, "_sock", None)  # pymysql
    if sock is None:
        transport = mysql_transport(driver_connection)
        sock = None if transport is None else transport.get_extra_info("socket")
    if sock is None or sock.fileno() < 0:
        return None
    return int(sock.fileno())


# -- connecting --------------------------------------------------------------


def wrap_creator(
    cparams: dict[str, Any],
    default: Callable[[], Callable[..., Any]],
    wrap: Callable[[Callable[..., Any]], Callable[..., Any]],
    mark: str,
) -> None:
    """Wrap the connect that an asyncio DBAPI adapter calls (``cparams``'
    ``async_creator_fn``, else ``default()``, its own) in ``wrap``; once for
    each ``mark``, since SQLAlchemy passes the same ``cparams`` to every
    connect."""
    connect = cparams.get("async_creator_fn") or default()
    marks: frozenset[str] = getattr(connect, "routing_db_marks", frozenset())
    if mark in marks:
        return
    wrapped = wrap(connect)
    wrapped.routing_db_marks = marks | {mark}  # type: ignore[attr-defined]
    cparams["async_creator_fn"] = wrapped
