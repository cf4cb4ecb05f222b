"""A session's connections: closing a dead replica quietly, and the places
where SQLAlchemy's ``Session`` has no public way in, kept here together.

``SessionTransaction._connections`` maps both the ``Connection`` and its
``Engine`` to ``(connection, transaction, should_commit, autoclose)`` in
SQLAlchemy 2.0 and 2.1; the functions below leave it alone when it does not
look like that.
"""

from __future__ import annotations

import select
from typing import Any

from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, SessionTransaction

from ._retry import is_connection_error

__all__ = [
    "checkout_failed",
    "close_quietly",
    "driver_says_closed",
    "drop_if_dead",
    "forget",
    "held",
    "idle",
    "marked_for_rerun",
    "rewind_close",
]


def checkout_failed(error: BaseException) -> bool:
    """Did getting a connection fail (so nothing reached the server)?"""
    return isinstance(error, sa_exc.TimeoutError) or is_connection_error(error)


def marked_for_rerun(error: BaseException) -> bool:
    return bool(getattr(error, "_routing_db_rerun", False))


def close_quietly(connection: Connection) -> None:
    """End a replica connection's read-only transaction; a dead one is dropped."""
    try:  # (closing a closed Connection does nothing)
        connection.close()
    except DBAPIError as exc:
        # Its transaction only read, so a lost connection loses nothing: it is
        # invalidated (SQLAlchemy does not recognise every way asyncpg reports
        # a dead socket) and closing again just releases it.
        if not (connection.invalidated or is_connection_error(exc)):
            raise
        if connection.closed:
            return
        if not connection.invalidated:
            connection.invalidate(exc)
        connection.close()


def driver_says_closed(driver_connection: Any) -> bool:
    """What the driver already knows about its socket, without any I/O."""
    is_closed = getattr(driver_connection, "is_closed", None)  # asyncpg
    if callable(is_closed):
        if is_closed():
            return True
        # The server's FATAL may be read already (asyncpg then refuses every
        # query) while the end of the stream waits for the event loop, and
        # is_closed() is still false: as for psycopg below, anything to read
        # on an idle connection means the server is ending it.
        transport = getattr(driver_connection, "_transport", None)
        sock = None if transport is None else transport.get_extra_info("socket")
        return sock is not None and sock.fileno() >= 0 and _readable(sock.fileno())
    for flag in ("broken", "closed"):  # psycopg 3, aiomysql/asyncmy
        value = getattr(driver_connection, flag, None)
        if isinstance(value, bool) and value:
            return True
    pgconn = getattr(driver_connection, "pgconn", None)  # psycopg 3
    if pgconn is not None:
        # libpq reads only while a query runs, so a server that closed an idle
        # connection goes unnoticed until the next query fails. Idle, with no
        # query in flight, anything to read (EOF, or the FATAL sent before it)
        # means the server is ending this connection.
        if pgconn.status != 0:  # libpq's CONNECTION_OK: it knows it is broken
            return True
        try:
            fd = pgconn.socket
        except Exception:  # psycopg raises once the connection is gone
            return True
        return _readable(fd)
    return False


def _readable(fd: int) -> bool:
    if hasattr(select, "poll"):  # no FD_SETSIZE limit, unlike select()
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        return bool(poller.poll(0))
    readable, _, _ = select.select([fd], [], [], 0)
    return bool(readable)


def _root(transaction: SessionTransaction) -> SessionTransaction:
    while transaction._parent is not None:
        transaction = transaction._parent
    return transaction


def held(transaction: SessionTransaction | None, bind: Any) -> Connection | None:
    """The connection ``transaction``'s root transaction holds for ``bind``."""
    if transaction is None:
        return None
    entry = _root(transaction)._connections.get(bind)
    return entry[0] if entry else None


def drop_if_dead(transaction: SessionTransaction | None, bind: Any) -> bool:
    """After closing ``transaction`` failed: if the connection its root holds
    for ``bind`` is dead, drop it and say so; else just close it."""
    if transaction is None:
        return False
    entry = _root(transaction)._connections.get(bind)
    if not entry or entry[0].closed:
        return False
    connection: Connection = entry[0]
    dead = connection.invalidated or driver_says_closed(
        connection.connection.driver_connection
    )
    close_quietly(connection)
    return dead


def rewind_close(session: Session, transaction: SessionTransaction | None) -> None:
    """After ``session.close()`` stopped part way through ``transaction`` and
    its parents, point the session back at the innermost one left unclosed,
    so that closing again finishes the rest."""
    while transaction is not None and transaction._transaction_is_closed():
        transaction = transaction._parent
    session._transaction = transaction


def idle(transaction: SessionTransaction) -> bool:
    """Has no connection begun in ``transaction``'s root transaction yet?"""
    return not _root(transaction)._connections


def forget(transaction: SessionTransaction | None, connection: Connection) -> None:
    """Detach ``connection`` from ``transaction`` as if it had never been opened."""
    if transaction is not None:
        transaction._connections.pop(connection, None)
        transaction._connections.pop(connection.engine, None)
