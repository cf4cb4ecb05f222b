"""Connections that may be dead: what the driver knows, closing them quietly."""

from __future__ import annotations

import select
import socket
from typing import Any

from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import SessionTransaction

from .._compat import asyncpg_socket, held, mysql_socket, mysql_transport
from .._retry import is_connection_error, is_recovery_conflict

__all__ = [
    "checkout_failed",
    "close_quietly",
    "cut",
    "driver_of",
    "driver_says_closed",
    "drop_if_dead",
]


def checkout_failed(error: BaseException) -> bool:
    """Did getting a connection fail (so nothing reached the server)?"""
    return isinstance(error, sa_exc.TimeoutError) or is_connection_error(error)


def close_quietly(connection: Connection) -> None:
    """End a replica connection's read-only transaction; a dead one is dropped."""
    try:  # (closing a closed Connection does nothing)
        connection.close()
    except DBAPIError as exc:
        # Its transaction only read, so a lost connection loses nothing: it is
        # invalidated (SQLAlchemy does not recognise every way asyncpg reports
        # a dead socket) and closing again just releases it. Nor does a
        # standby's recovery conflict (its FATAL form ends an idle-in-
        # transaction session, seen only at this ROLLBACK).
        if not (
            connection.invalidated
            or is_connection_error(exc)
            or is_recovery_conflict(exc)
        ):
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
        fd = asyncpg_socket(driver_connection)
        return fd is not None and _readable(fd)
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
    closed = getattr(driver_connection, "closed", None)
    if type(closed) is int and hasattr(driver_connection, "get_backend_pid"):
        # psycopg2: closed is 0 while open; idle, as for psycopg above,
        # anything to read means the server is ending the connection.
        return closed != 0 or _readable(driver_connection.fileno())
    transport = mysql_transport(driver_connection)
    if transport is not None and transport.is_closing():
        return True  # asyncmy closes its transport at the end of the stream
    fd = mysql_socket(driver_connection)
    if fd is not None and _readable(fd):
        # aiomysql and pymysql notice a closed socket only when a statement
        # sent on it fails, and a write that may have been sent is never
        # rerun. A MySQL server sends nothing unasked: on an idle connection
        # anything to read (the end of the stream after a crash, or a
        # KILL's error) means the server is ending it.
        return True
    return getattr(driver_connection, "open", True) is False  # pymysql, mysqldb


def driver_of(dbapi_connection: Any) -> Any:
    """The driver's connection behind a pool event's ``dbapi_connection``
    (an asyncio driver's is wrapped in SQLAlchemy's adapter; a sync one is not)."""
    return getattr(dbapi_connection, "driver_connection", dbapi_connection)


def _readable(fd: int) -> bool:
    if hasattr(select, "poll"):  # no FD_SETSIZE limit, unlike select()
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        return bool(poller.poll(0))
    readable, _, _ = select.select([fd], [], [], 0)
    return bool(readable)


def drop_if_dead(transaction: SessionTransaction | None, bind: Any) -> bool:
    """After closing ``transaction`` failed: if the connection its root holds
    for ``bind`` is dead, drop it and say so; else just close it."""
    connection = held(transaction, bind)
    if connection is None or connection.closed:
        return False
    dead = connection.invalidated or driver_says_closed(
        connection.connection.driver_connection
    )
    close_quietly(connection)
    return dead


def cut(driver_connection: Any) -> bool:
    """End a connection from outside its task: its socket is shut down, so
    the driver fails what it waits for, or its next statement, as a lost
    connection. Return whether there was a socket to shut down."""
    pgconn = getattr(driver_connection, "pgconn", None)  # psycopg 3
    fd: int | None
    try:
        if pgconn is not None:
            fd = int(pgconn.socket)
        elif hasattr(driver_connection, "get_backend_pid"):  # psycopg2
            fd = int(driver_connection.fileno())
        else:
            fd = asyncpg_socket(driver_connection) or mysql_socket(driver_connection)
    except Exception:  # closed already
        return False
    if fd is None:
        return False
    # Shut down, not closed: the file descriptor stays the driver's to close.
    try:
        with socket.fromfd(fd, socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        return False
    return True
