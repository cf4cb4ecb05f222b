"""A replica statement past its bound, what both faces share: the error it
raises (translated from the lost connection it dies of), and how its server
is asked to stop it (the server may only be slow)."""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable
from typing import Any

from .._backends.connections import cut
from .._exceptions import ReplicaReadTimeout

__all__ = ["CANCEL", "backend_id", "expired", "timeout_error", "timeout_translator"]

# Driver connections whose statement ran past the bound: the error their
# statement then raises (a lost connection) is the timeout's.
expired: weakref.WeakSet[Any] = weakref.WeakSet()

# How a server is asked to stop one session's statement, by dialect.
CANCEL = {
    "postgresql": "SELECT pg_cancel_backend({})",
    "mysql": "KILL QUERY {}",
    "mariadb": "KILL QUERY {}",
}


def timeout_error(
    seconds: float, statement: Any = None, parameters: Any = None, error: Any = None
) -> ReplicaReadTimeout:
    """The error of a replica statement (or ping, or ROLLBACK) past the bound."""
    timeout = ReplicaReadTimeout(
        statement, parameters, error or TimeoutError(), connection_invalidated=True
    )
    timeout.args = (
        f"a replica read took longer than replica_read_timeout ({seconds:g} s): "
        "it was cancelled and its connection discarded",
    )
    return timeout


def backend_id(connection: Any) -> int | None:
    """The server's id of this connection's session (what a cancel names)."""
    with contextlib.suppress(Exception):
        if hasattr(connection, "get_server_pid"):  # asyncpg
            return int(connection.get_server_pid())
        if hasattr(connection, "get_backend_pid"):  # psycopg2
            return int(connection.get_backend_pid())
        if hasattr(connection, "pgconn"):  # psycopg
            return int(connection.info.backend_pid)
        thread_id = connection.thread_id  # aiomysql, asyncmy
        return int(thread_id() if callable(thread_id) else thread_id)
    return None


def _discard(driver_connection: Any) -> None:
    # At once: SQLAlchemy closes an invalidated connection gracefully, which
    # waits on a server that does not answer.
    terminate = getattr(driver_connection, "terminate", None)
    if callable(terminate):  # asyncpg
        terminate()
    else:
        cut(driver_connection)


def timeout_translator(seconds: float) -> Callable[[Any], BaseException | None]:
    """A ``handle_error`` hook: the error of a statement cut past the bound
    becomes ``ReplicaReadTimeout`` (either face)."""

    def translate(context: Any) -> BaseException | None:
        connection = context.connection
        if connection is None or connection.invalidated:
            return None  # connecting: connect_timeout's, not ours
        driver_connection = connection.connection.driver_connection
        if driver_connection not in expired:
            return None
        expired.discard(driver_connection)
        error = context.original_exception
        _discard(driver_connection)
        context.is_disconnect = True
        return timeout_error(seconds, context.statement, context.parameters, error)

    return translate
