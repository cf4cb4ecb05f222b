"""A replica statement past its bound, on either face: the error it raises,
and how its server is asked to stop it (the server may only be slow)."""

from __future__ import annotations

import contextlib
from typing import Any

from ._exceptions import ReplicaReadTimeout

__all__ = ["CANCEL", "backend_id", "timeout_error"]

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
