"""Replication positions: the SQL that reads them and the cheapest way to run it.

WAL positions are read as numbers (``lsn - '0/0'``) so that no driver has to
know the ``pg_lsn`` type.
"""

from __future__ import annotations

import contextlib
from typing import Any

from sqlalchemy.engine import Connection, Engine
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.util import await_only

__all__ = [
    "REPLICA_SQL",
    "WRITER_SQL",
    "fetch_row",
    "has_positions",
    "replay_lsn_now",
    "writer_lsn_after_commit",
]

WRITER_SQL = "SELECT pg_current_wal_lsn() - '0/0'::pg_lsn"
# Replay position, and the age of the last replayed transaction (the lag in
# seconds while the replica is behind; meaningless once it has caught up).
REPLICA_SQL = (
    "SELECT pg_last_wal_replay_lsn() - '0/0'::pg_lsn, "
    "extract(epoch FROM clock_timestamp() - pg_last_xact_replay_timestamp())"
)
_REPLAY_SQL = "SELECT pg_last_wal_replay_lsn() - '0/0'::pg_lsn"


def has_positions(dialect_name: str) -> bool:
    """Does this backend have WAL positions routing_db can compare?"""
    return dialect_name == "postgresql"


def _as_int(value: Any) -> int | None:
    return None if value is None else int(value)


async def _psycopg_scalar(driver_connection: Any, sql: str) -> Any:
    # Autocommit for this one query: psycopg would otherwise send BEGIN
    # before it and the pool a ROLLBACK after it, three round trips for one.
    autocommit = driver_connection.autocommit
    await driver_connection.set_autocommit(True)
    try:
        cursor = await driver_connection.execute(sql, prepare=False)
        row = await cursor.fetchone()
    finally:
        await driver_connection.set_autocommit(autocommit)
    return row[0] if row else None


def _scalar(driver_connection: Any, dbapi_connection: Any, sql: str) -> Any:
    fetchval = getattr(driver_connection, "fetchval", None)
    if callable(fetchval):
        # asyncpg outside a transaction: one round trip, no BEGIN/ROLLBACK.
        return await_only(fetchval(sql))
    if hasattr(driver_connection, "pgconn"):  # psycopg 3, idle after COMMIT
        return await_only(_psycopg_scalar(driver_connection, sql))
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(sql)
        row = cursor.fetchone()
    finally:
        cursor.close()
    dbapi_connection.rollback()
    return row[0] if row else None


def writer_lsn_after_commit(connection: Connection) -> int | None:
    """The writer's WAL position, read on ``connection`` right after its COMMIT."""
    if not has_positions(connection.dialect.name):
        return None
    proxied = connection.connection
    return _as_int(
        _scalar(proxied.driver_connection, proxied.dbapi_connection, WRITER_SQL)
    )


def replay_lsn_now(engine: Engine) -> int | None:
    """A replica's replay position, read now on a pooled connection."""
    raw = engine.raw_connection()
    try:
        return _as_int(
            _scalar(raw.driver_connection, raw.dbapi_connection, _REPLAY_SQL)
        )
    finally:
        with contextlib.suppress(Exception):  # returning it to the pool
            raw.close()


async def fetch_row(engine: AsyncEngine, sql: str) -> tuple[Any, ...]:
    """Run ``sql`` on a pooled connection of ``engine`` and return its row."""
    async with engine.connect() as connection:
        row = (await connection.exec_driver_sql(sql)).one()
    return tuple(row)
