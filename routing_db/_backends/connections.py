"""Connections that may be dead: what the driver knows, closing them quietly."""

from __future__ import annotations

from typing import Any

from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import SessionTransaction

from .._compat import held
from .._retry import is_connection_error, is_recovery_conflict
from .backend import shut_down
from .registry import backend_of

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
    return backend_of(driver_connection).says_closed(driver_connection)


def driver_of(dbapi_connection: Any) -> Any:
    """The driver's connection behind a pool event's ``dbapi_connection``
    (an asyncio driver's is wrapped in SQLAlchemy's adapter; a sync one is not)."""
    return getattr(dbapi_connection, "driver_connection", dbapi_connection)


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
    fd = backend_of(driver_connection).socket_of(driver_connection)
    return fd is not None and shut_down(fd)
