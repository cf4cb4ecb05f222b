"""Replication positions and roles, asked of whichever backend a connection's is.

A position is one integer (see ``_causal.floor``), so routing compares
positions without knowing the backend; each backend's module says how it
reads them.
"""

from __future__ import annotations

import contextlib

from sqlalchemy.engine import Connection, Engine
from sqlalchemy.pool import PoolProxiedConnection

from .._causal.floor import reached
from .backend import SERVER, Backend, ReplicaStatus, Role
from .registry import backend_for

__all__ = [
    "has_positions",
    "replay_position_now",
    "replay_position_on",
    "replica_status",
    "role_of",
    "takes_writes",
    "takes_writes_now",
    "writer_position",
    "writer_position_after_commit",
    "writer_position_now",
]


def _backend(dialect_name: str) -> Backend:
    backend = backend_for(dialect_name)
    if backend is None:
        raise KeyError(dialect_name)
    return backend


def has_positions(dialect_name: str) -> bool:
    """Does this backend have replication positions routing_db can compare?"""
    backend = backend_for(dialect_name)
    return backend is not None and backend.has_positions


def writer_position_after_commit(
    proxied: PoolProxiedConnection, dialect: str
) -> tuple[int, int | None, str] | None:
    """(position, GTID server id, cluster), read on the pooled connection
    ``proxied`` (of ``dialect``) right after its COMMIT."""
    backend = backend_for(dialect)
    if backend is None or not backend.has_positions:
        return None
    return backend.after_commit(
        proxied.driver_connection, proxied.dbapi_connection, proxied.info
    )


def replay_position_on(connection: Connection, floor: int) -> int | None:
    """The replay position, in ``floor``'s domain, of the server ``connection``
    reached: asked on that very connection, before its transaction sends
    anything (the read it serves is judged by its own server)."""
    proxied = connection.connection
    return _backend(connection.dialect.name).replay_now(
        proxied.driver_connection, proxied.dbapi_connection, floor
    )


def replay_position_now(engine: Engine, floor: int) -> tuple[int | None, str | None]:
    """A replica's position now, in ``floor``'s domain, on a pooled connection,
    and the server that connection reached."""
    backend = _backend(engine.dialect.name)
    raw = engine.raw_connection()
    try:
        server: str | None = raw.info.get(SERVER)
        position = backend.replay_now(
            raw.driver_connection, raw.dbapi_connection, floor
        )
        return position, server
    except BaseException as exc:
        # Whatever went wrong, this connection is not to be trusted again.
        with contextlib.suppress(Exception):
            raw.invalidate(exc if isinstance(exc, Exception) else None)
        raise
    finally:
        with contextlib.suppress(Exception):  # returning it to the pool
            raw.close()


def role_of(connection: Connection) -> Role:
    """Does the server take writes now, and on which timeline? (Discovery's check.)"""
    return _backend(connection.dialect.name).role(connection)


def takes_writes_now(engine: Engine) -> bool:
    """Does ``engine``'s server take writes now? (SQLAlchemy's sync layer.)"""
    backend = _backend(engine.dialect.name)
    if backend.takes_writes_sql is None:
        return True
    raw = engine.raw_connection()
    try:
        sql = backend.takes_writes_sql
        row = backend.one_row(raw.driver_connection, raw.dbapi_connection, sql)
        return bool(row and row[0])
    finally:
        with contextlib.suppress(Exception):  # returning it to the pool
            raw.close()


def takes_writes(connection: Connection) -> bool:
    """Does the server take writes now? (The monitor's check.)"""
    sql = _backend(connection.dialect.name).takes_writes_sql
    return sql is None or bool(connection.exec_driver_sql(sql).scalar())


def writer_position_now(engine: Engine) -> tuple[int, str] | None:
    """The writer's newest position and its cluster, on a new connection."""
    backend = _backend(engine.dialect.name)
    with engine.connect() as connection:
        return backend.writer_now(connection)


def writer_position(connection: Connection) -> int | None:
    """The writer's newest position (for lag), in its own GTID domain."""
    return _backend(connection.dialect.name).writer(connection)


def replica_status(connection: Connection, writer: int | None) -> ReplicaStatus:
    """What a replica says of itself; ``writer`` is the writer's position now."""
    status = _backend(connection.dialect.name).replica(connection, writer)
    status = status._replace(server=connection.info.get(SERVER))
    if status.position is None or writer is None:
        return status._replace(lag_bytes=None, lag_seconds=None)
    if reached(status.position, writer):
        # Caught up means no lag, however old the last applied transaction
        # is: an idle primary must not look like a lagging one.
        lag_bytes = None if status.lag_bytes is None else 0
        return status._replace(lag_bytes=lag_bytes, lag_seconds=0.0)
    return status
