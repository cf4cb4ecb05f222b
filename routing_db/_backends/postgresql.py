"""PostgreSQL and its drivers: asyncpg and psycopg (asyncio), psycopg2 and
psycopg (sync).

Positions are WAL positions, as a number of bytes (``lsn - '0/0'``, so that
no driver has to know the ``pg_lsn`` type); the cluster is the
``system_identifier`` every standby shares with its primary.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import math
import uuid
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

from sqlalchemy.engine import URL, Connection
from sqlalchemy.util import await_only

from .._causal.floor import ANY_CLUSTER
from .._compat import asyncpg_socket
from .backend import (
    Backend,
    Bound,
    Bounded,
    Found,
    ReplicaStatus,
    Role,
    Watched,
    readable,
    watched,
    watched_async,
)

__all__ = ["PostgreSQL"]

_WRITER_SQL = "SELECT pg_current_wal_lsn() - '0/0'::pg_lsn"
# The same, and the cluster: asked once per connection.
_WRITER_CLUSTER_SQL = (
    "SELECT pg_current_wal_lsn() - '0/0'::pg_lsn, "
    "(SELECT system_identifier::text FROM pg_control_system())"
)
_REPLAY_SQL = "SELECT pg_last_wal_replay_lsn() - '0/0'::pg_lsn"
# Replay position, and the age of the last replayed transaction (the lag in
# seconds while the replica is behind; meaningless once it has caught up).
# And whether its WAL receiver streams (no row: it stopped, or never started).
# A role without pg_read_all_stats sees the receiver's pid but not its status:
# a receiver that runs counts as streaming then (no false alarm on every
# healthy standby; a stopped receiver still shows, having no row).
_REPLICA_SQL = (
    "SELECT pg_last_wal_replay_lsn() - '0/0'::pg_lsn, "
    "extract(epoch FROM clock_timestamp() - pg_last_xact_replay_timestamp()), "
    "pg_is_in_recovery(), "
    "coalesce((SELECT CASE WHEN status IS NULL THEN pid IS NOT NULL "
    "ELSE status = 'streaming' END FROM pg_stat_wal_receiver), false)"
)
# The primary's timeline is the first 8 hex digits of its current WAL file's
# name (exact at once after a promotion; the control file's waits for a
# checkpoint). A standby cannot name its WAL file: it says what an ordinary
# role can read (the control file's timelines, which wait for a
# restartpoint), and what its receiver streams where the role may see that
# (pg_read_all_stats).
_RECEIVING = "(SELECT max(received_tli) FROM pg_stat_wal_receiver)"
_ROLE_SQL = (
    "SELECT NOT pg_is_in_recovery(), CASE WHEN pg_is_in_recovery() "
    "THEN GREATEST((pg_control_checkpoint()).timeline_id, "
    f"(pg_control_recovery()).min_recovery_end_timeline, {_RECEIVING}) "
    "ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))"
    f"::bit(32)::int END, CASE WHEN pg_is_in_recovery() THEN {_RECEIVING} END"
)
# One round trip: is it a standby, which server is it (where it listens, as
# it sees itself, so a proxy or NAT in between changes nothing, and since
# when it runs), its cluster, and make every transaction on this connection
# read-only (session-level set_config).
_SETUP_SQL = (
    "SELECT pg_is_in_recovery(), "
    "concat_ws(' ', inet_server_addr(), inet_server_port(), "
    "pg_postmaster_start_time()), "
    "(SELECT system_identifier::text FROM pg_control_system()), "
    "set_config('default_transaction_read_only', 'on', false)"
)
# The writer connection's cluster, learned with its first position.
_CLUSTER = "routing_db.cluster"


def _attribute(module: str, path: str) -> Callable[[], Callable[..., Any]]:
    def find() -> Callable[..., Any]:
        found: Any = importlib.import_module(module)
        for name in path.split("."):
            found = getattr(found, name)
        return found  # type: ignore[no-any-return]

    return find


def _unique_statement_name() -> str:
    return f"__asyncpg_{uuid.uuid4()}__"


class PostgreSQL(Backend):
    """PostgreSQL: WAL positions, standbys, ``pg_cancel_backend``."""

    name = "postgresql"
    async_drivers = frozenset({"asyncpg", "psycopg", "psycopg_async"})
    async_default = "asyncpg"
    sync_drivers = frozenset({"psycopg2", "psycopg"})
    sync_default = "psycopg"
    packages: ClassVar[Mapping[str, str]] = {
        "psycopg_async": "psycopg",
        "psycopg": "psycopg[binary]",
    }
    creators: ClassVar[Mapping[str, Callable[[], Any]]] = {
        "asyncpg": _attribute("asyncpg", "connect"),
        "psycopg": _attribute("psycopg", "AsyncConnection.connect"),
        "psycopg_async": _attribute("psycopg", "AsyncConnection.connect"),
    }
    takes_writes_sql = "SELECT NOT pg_is_in_recovery()"
    standby_sql = "SELECT pg_is_in_recovery()"
    replicates = True
    cancel_sql = "SELECT pg_cancel_backend({})"
    has_positions = True

    def setup_replica(self, cursor: Any) -> Found:
        cursor.execute(_SETUP_SQL)
        row = cursor.fetchone()
        clusters = None if row[2] is None else frozenset([row[2]])
        return Found(bool(row[0]), row[1], clusters)

    def role(self, connection: Connection) -> Role:
        row: Any = connection.exec_driver_sql(_ROLE_SQL).one()
        return Role(
            bool(row[0]),
            None if row[1] is None else int(row[1]),
            None if row[2] is None else int(row[2]),
        )

    def behind_pgbouncer(
        self, url: URL, kwargs: dict[str, Any]
    ) -> tuple[URL, dict[str, Any]]:
        # Each transaction may get another server connection, so no prepared
        # statement may outlive the transaction that made it: asyncpg gets no
        # statement cache (neither its own nor SQLAlchemy's) and a unique name
        # for each statement; psycopg never prepares; psycopg2 never does.
        driver = url.get_driver_name()
        connect_args = dict(kwargs.get("connect_args") or {})
        if driver == "asyncpg":
            url = url.update_query_dict({"prepared_statement_cache_size": "0"})
            connect_args.setdefault("statement_cache_size", 0)
            connect_args.setdefault(
                "prepared_statement_name_func", _unique_statement_name
            )
        elif driver in ("psycopg", "psycopg_async"):
            connect_args.setdefault("prepare_threshold", None)
        return url, {**kwargs, "connect_args": connect_args}

    # -- positions ----------------------------------------------------------

    def after_commit(
        self, driver: Any, dbapi: Any, info: dict[Any, Any]
    ) -> tuple[int, int | None, str] | None:
        cluster = info.get(_CLUSTER)
        if cluster is None:
            row = self.one_row(driver, dbapi, _WRITER_CLUSTER_SQL)
            lsn, cluster = row if row else (None, None)
            info[_CLUSTER] = cluster = cluster or ANY_CLUSTER
        else:
            row = self.one_row(driver, dbapi, _WRITER_SQL)
            lsn = row[0] if row else None
        return None if lsn is None else (int(lsn), None, cluster)

    def replay_now(self, driver: Any, dbapi: Any, floor: int) -> int | None:
        row = self.one_row(driver, dbapi, _REPLAY_SQL)
        return None if not row or row[0] is None else int(row[0])

    def writer(self, connection: Connection) -> int | None:
        value = connection.exec_driver_sql(_WRITER_SQL).scalar()
        return None if value is None else int(value)

    def writer_now(self, connection: Connection) -> tuple[int, str] | None:
        row: Any = connection.exec_driver_sql(_WRITER_CLUSTER_SQL).one()
        return None if row[0] is None else (int(row[0]), str(row[1]))

    def replica(self, connection: Connection, writer: int | None) -> ReplicaStatus:
        row: Any = connection.exec_driver_sql(_REPLICA_SQL).one()
        position = None if row[0] is None else int(row[0])
        lag_bytes = (
            None if writer is None or position is None else max(0, writer - position)
        )
        # NULL: no transaction replayed since it started (no age to tell).
        seconds = None if row[1] is None else float(row[1])
        return ReplicaStatus(position, lag_bytes, seconds, bool(row[2]), bool(row[3]))

    # -- driver connections ---------------------------------------------------

    def owns(self, driver_connection: Any) -> bool:
        return any(
            hasattr(driver_connection, name)
            for name in ("get_server_pid", "pgconn", "get_backend_pid")
        )

    def one_row(self, driver_connection: Any, dbapi_connection: Any, sql: str) -> Any:
        fetchrow = getattr(driver_connection, "fetchrow", None)
        if callable(fetchrow):
            # asyncpg outside a transaction: one round trip, no BEGIN/ROLLBACK.
            return await_only(fetchrow(sql))
        if hasattr(driver_connection, "pgconn"):  # psycopg 3, idle after COMMIT
            if inspect.iscoroutinefunction(driver_connection.set_autocommit):
                return await_only(_psycopg_row(driver_connection, sql))
            return _psycopg_sync_row(driver_connection, sql)
        return super().one_row(driver_connection, dbapi_connection, sql)

    def session_id(self, driver_connection: Any) -> int | None:
        with contextlib.suppress(Exception):
            if hasattr(driver_connection, "get_server_pid"):  # asyncpg
                return int(driver_connection.get_server_pid())
            if hasattr(driver_connection, "get_backend_pid"):  # psycopg2
                return int(driver_connection.get_backend_pid())
            return int(driver_connection.info.backend_pid)  # psycopg
        return None

    def socket_of(self, driver_connection: Any) -> int | None:
        pgconn = getattr(driver_connection, "pgconn", None)  # psycopg 3
        try:
            if pgconn is not None:
                return int(pgconn.socket)
            if hasattr(driver_connection, "get_backend_pid"):  # psycopg2
                return int(driver_connection.fileno())
        except Exception:  # closed already
            return None
        return asyncpg_socket(driver_connection)

    def discard(self, driver_connection: Any) -> None:
        terminate = getattr(driver_connection, "terminate", None)
        if callable(terminate):  # asyncpg
            terminate()
        else:
            super().discard(driver_connection)

    def says_closed(self, driver_connection: Any) -> bool:
        is_closed = getattr(driver_connection, "is_closed", None)  # asyncpg
        if callable(is_closed):
            if is_closed():
                return True
            # The server's FATAL may be read already (asyncpg then refuses
            # every query) while the end of the stream waits for the event
            # loop, and is_closed() is still false: as for psycopg below,
            # anything to read on an idle connection means the server is
            # ending it.
            fd = asyncpg_socket(driver_connection)
            return fd is not None and readable(fd)
        pgconn = getattr(driver_connection, "pgconn", None)  # psycopg 3
        if pgconn is not None:
            if getattr(driver_connection, "broken", False) or driver_connection.closed:
                return True
            # libpq reads only while a query runs, so a server that closed an
            # idle connection goes unnoticed until the next query fails. Idle,
            # with no query in flight, anything to read (EOF, or the FATAL
            # sent before it) means the server is ending this connection.
            if pgconn.status != 0:  # libpq's CONNECTION_OK: it knows it is broken
                return True
            try:
                fd = pgconn.socket
            except Exception:  # psycopg raises once the connection is gone
                return True
            return readable(fd)
        # psycopg2: closed is 0 while open; idle, as for psycopg above,
        # anything to read means the server is ending the connection.
        return driver_connection.closed != 0 or readable(driver_connection.fileno())

    def connect_timeout_args(self, driver: str, seconds: float) -> dict[str, Any]:
        if driver == "asyncpg":
            return {"timeout": seconds}  # the whole connect, startup included
        # libpq takes whole seconds, and treats less than 2 as 2.
        return {"connect_timeout": max(2, math.ceil(seconds))}

    def read_timeout(
        self, driver: str, bound: Bound, *, is_async: bool
    ) -> Bounded | None:
        if driver == "asyncpg":
            return Bounded({"connection_class": _asyncpg_class(bound)})
        if is_async:
            return _psycopg_async_bounded(bound)
        return _sync_bounded(driver, bound)


async def _psycopg_row(driver_connection: Any, sql: str) -> Any:
    # Autocommit for this one query: psycopg would otherwise send BEGIN
    # before it and the pool a ROLLBACK after it, three round trips for one.
    autocommit = driver_connection.autocommit
    await driver_connection.set_autocommit(True)
    try:
        cursor = await driver_connection.execute(sql, prepare=False)
        row = await cursor.fetchone()
    finally:
        await driver_connection.set_autocommit(autocommit)
    return row


def _psycopg_sync_row(driver_connection: Any, sql: str) -> Any:
    # As _psycopg_row, for psycopg's sync connection.
    autocommit = driver_connection.autocommit
    driver_connection.autocommit = True
    try:
        row = driver_connection.execute(sql, prepare=False).fetchone()
    finally:
        driver_connection.autocommit = autocommit
    return row


def _asyncpg_class(bound: Bound) -> type:
    from asyncpg import Connection as AsyncpgConnection

    class BoundedStatement:
        """asyncpg's prepared statement, its ``fetch()`` (which SQLAlchemy
        runs each statement with) watched."""

        __slots__ = ("_connection", "_statement")

        def __init__(self, statement: Any, connection: Any) -> None:
            self._statement = statement
            self._connection = connection

        async def fetch(self, *args: Any, **kw: Any) -> Any:
            with self._connection.routing_db_running:
                return await self._statement.fetch(*args, **kw)

        def get_statusmsg(self) -> Any:  # after each fetch: not by __getattr__
            return self._statement.get_statusmsg()

        def __getattr__(self, name: str) -> Any:
            return getattr(self._statement, name)

    class BoundedConnection(Watched, AsyncpgConnection):  # type: ignore[misc]
        routing_db_bound = bound

        async def prepare(self, *args: Any, **kw: Any) -> Any:
            with self.routing_db_running:
                statement = await super().prepare(*args, **kw)
            return BoundedStatement(statement, self)

        # asyncpg's Transaction runs BEGIN, COMMIT and ROLLBACK in execute();
        # SQLAlchemy's ping at checkout (fetchrow) and routing_db's replay
        # position (fetchval) do not go through prepare().
        execute = watched_async(AsyncpgConnection.execute)
        fetchrow = watched_async(AsyncpgConnection.fetchrow)
        fetchval = watched_async(AsyncpgConnection.fetchval)

    return BoundedConnection


# psycopg and psycopg2: the cursors' statements, and the connection's COMMIT
# and ROLLBACK (the end of a replica's read-only transaction), are watched.


def _psycopg_async_bounded(bound: Bound) -> Bounded:
    from psycopg import AsyncConnection, AsyncCursor

    class BoundedCursor(AsyncCursor[Any]):
        execute = watched_async(AsyncCursor.execute, cursor=True)

    class BoundedConnection(Watched, AsyncConnection[Any]):
        routing_db_bound = bound
        commit = watched_async(AsyncConnection.commit)
        rollback = watched_async(AsyncConnection.rollback)

    return Bounded(
        {"async_creator_fn": BoundedConnection.connect, "cursor_factory": BoundedCursor}
    )


def _sync_bounded(driver: str, bound: Bound) -> Bounded:
    if driver == "psycopg2":
        module = importlib.import_module("psycopg2.extensions")
        connection, cursor = module.connection, module.cursor
    else:
        module = importlib.import_module("psycopg")
        connection, cursor = module.Connection, module.Cursor

    class BoundedConnection(Watched, connection):  # type: ignore[valid-type,misc]
        routing_db_bound = bound
        commit = watched(connection.commit)
        rollback = watched(connection.rollback)

    class BoundedCursor(cursor):  # type: ignore[valid-type,misc]
        execute = watched(cursor.execute, cursor=True)
        executemany = watched(cursor.executemany, cursor=True)

    if driver == "psycopg2":
        return Bounded(
            {"cursor_factory": BoundedCursor, "connection_factory": BoundedConnection}
        )
    # psycopg makes its connection in Connection.connect().
    return Bounded({"cursor_factory": BoundedCursor}, BoundedConnection.connect)
