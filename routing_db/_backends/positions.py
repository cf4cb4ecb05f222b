"""Replication positions: how each backend reads and compares them.

A position is one integer (see ``_causal.floor``), so routing compares positions
without knowing the backend. PostgreSQL: the WAL position (``lsn - '0/0'``,
so that no driver has to know the ``pg_lsn`` type). MariaDB: a GTID's
sequence number within its replication domain.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
from typing import Any, NamedTuple

from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.util import await_only

from .._causal.floor import (
    ANY_CLUSTER,
    DOMAIN_SHIFT,
    encode_gtid,
    gtid_cluster,
    reached,
)
from .._retry import is_connection_error

__all__ = [
    "CLUSTERS",
    "SERVER",
    "ReplicaStatus",
    "Role",
    "clusters_of",
    "has_positions",
    "replay_position_now",
    "replay_position_on",
    "replica_status",
    "role_of",
    "scalar_on",
    "takes_writes",
    "takes_writes_now",
    "writer_position",
    "writer_position_after_commit",
    "writer_position_now",
]


logger = logging.getLogger("routing_db")

# What a connection's record knows of the server it reached (learned once,
# when the connection is made; see setup): which server, and the clusters
# whose positions it replays. Behind one URL (a reader endpoint) connections
# reach different servers: positions are facts about servers, not engines.
SERVER = "routing_db.server"
CLUSTERS = "routing_db.clusters"
# The writer connection's cluster, learned with its first position.
_CLUSTER = "routing_db.cluster"


def clusters_of(info: dict[Any, Any]) -> frozenset[str] | None:
    """The clusters a connection's server replays (None: not known)."""
    clusters: frozenset[str] | None = info.get(CLUSTERS)
    return clusters


class ReplicaStatus(NamedTuple):
    """What the monitor learns of a replica each round."""

    position: int | None  # replayed up to (None: unknown)
    lag_bytes: int | None
    lag_seconds: float | None
    standby: bool  # still a standby (False: it takes writes, promoted)
    # Receiving and applying its primary's changes (None: cannot tell).
    streaming: bool | None
    server: str | None = None  # the server the answering connection reached

    def unbounded(self, writer: int | None) -> bool:
        """Not streaming, behind ``writer``, and no measure of how far behind."""
        return (
            self.streaming is False
            and self.lag_bytes is None
            and self.lag_seconds is None
            and self.position is not None
            and writer is not None
            and not reached(self.position, writer)
        )


_PG_WRITER_SQL = "SELECT pg_current_wal_lsn() - '0/0'::pg_lsn"
# The same, and the cluster: asked once per connection.
_PG_WRITER_CLUSTER_SQL = (
    "SELECT pg_current_wal_lsn() - '0/0'::pg_lsn, "
    "(SELECT system_identifier::text FROM pg_control_system())"
)
_PG_REPLAY_SQL = "SELECT pg_last_wal_replay_lsn() - '0/0'::pg_lsn"
# Replay position, and the age of the last replayed transaction (the lag in
# seconds while the replica is behind; meaningless once it has caught up).
# And whether its WAL receiver streams (no row: it stopped, or never started).
# A role without pg_read_all_stats sees the receiver's pid but not its status:
# a receiver that runs counts as streaming then (no false alarm on every
# healthy standby; a stopped receiver still shows, having no row).
_PG_REPLICA_SQL = (
    "SELECT pg_last_wal_replay_lsn() - '0/0'::pg_lsn, "
    "extract(epoch FROM clock_timestamp() - pg_last_xact_replay_timestamp()), "
    "pg_is_in_recovery(), "
    "coalesce((SELECT CASE WHEN status IS NULL THEN pid IS NOT NULL "
    "ELSE status = 'streaming' END FROM pg_stat_wal_receiver), false)"
)
# MariaDB: the GTID of this session's last commit; what a replica has applied
# (gtid_slave_pos moves only when the SQL thread applies a transaction).
_LAST_GTID_SQL = "SELECT @@last_gtid"
_APPLIED_SQL = "SELECT @@global.gtid_slave_pos"
_APPLIED_ROLE_SQL = "SELECT @@global.gtid_slave_pos, @@global.read_only"
_BINLOG_SQL = "SELECT @@global.gtid_domain_id, @@global.gtid_binlog_pos"


def _gtid_position(gtid_list: str | None, domain: int) -> int | None:
    # "0-1-42,1-3-7": one GTID per domain.
    for gtid in (gtid_list or "").split(","):
        parts = gtid.strip().split("-")
        if len(parts) == 3 and int(parts[0]) == domain:
            return encode_gtid(domain, int(parts[2]))
    return None


def scalar_on(driver_connection: Any, dbapi_connection: Any, sql: str) -> Any:
    """One value of ``sql`` on a connection outside any transaction of
    SQLAlchemy's (asyncpg: one round trip; psycopg: autocommit for it)."""
    row = _row(driver_connection, dbapi_connection, sql)
    return row[0] if row else None


def _row(driver_connection: Any, dbapi_connection: Any, sql: str) -> Any:
    fetchrow = getattr(driver_connection, "fetchrow", None)
    if callable(fetchrow):
        # asyncpg outside a transaction: one round trip, no BEGIN/ROLLBACK.
        return await_only(fetchrow(sql))
    if hasattr(driver_connection, "pgconn"):  # psycopg 3, idle after COMMIT
        if inspect.iscoroutinefunction(driver_connection.set_autocommit):
            return await_only(_psycopg_row(driver_connection, sql))
        return _psycopg_sync_row(driver_connection, sql)
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(sql)
        row = cursor.fetchone()
    finally:
        cursor.close()
    dbapi_connection.rollback()
    return row


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


class _PostgreSQL:
    """WAL positions: the LSN as a number of bytes; the cluster is the
    ``system_identifier`` every standby shares with its primary."""

    def after_commit(
        self, driver: Any, dbapi: Any, info: dict[Any, Any]
    ) -> tuple[int, int | None, str] | None:
        cluster = info.get(_CLUSTER)
        if cluster is None:
            row = _row(driver, dbapi, _PG_WRITER_CLUSTER_SQL)
            lsn, cluster = row if row else (None, None)
            info[_CLUSTER] = cluster = cluster or ANY_CLUSTER
        else:
            lsn = scalar_on(driver, dbapi, _PG_WRITER_SQL)
        return None if lsn is None else (int(lsn), None, cluster)

    def replay_now(self, driver: Any, dbapi: Any, floor: int) -> int | None:
        lsn = scalar_on(driver, dbapi, _PG_REPLAY_SQL)
        return None if lsn is None else int(lsn)

    def writer(self, connection: Connection) -> int | None:
        value = connection.exec_driver_sql(_PG_WRITER_SQL).scalar()
        return None if value is None else int(value)

    def replica(self, connection: Connection, writer: int | None) -> ReplicaStatus:
        row: Any = connection.exec_driver_sql(_PG_REPLICA_SQL).one()
        position = None if row[0] is None else int(row[0])
        lag_bytes = (
            None if writer is None or position is None else max(0, writer - position)
        )
        standby = bool(row[2])
        return ReplicaStatus(
            position, lag_bytes, float(row[1] or 0.0), standby, bool(row[3]),
            connection.info.get(SERVER),
        )  # fmt: skip


class _MariaDB:
    """GTIDs: a sequence number within its replication domain (the cluster)."""

    def after_commit(
        self, driver: Any, dbapi: Any, info: dict[Any, Any]
    ) -> tuple[int, int | None, str] | None:
        gtid = scalar_on(driver, dbapi, _LAST_GTID_SQL)
        if not gtid:
            return None
        domain, server, seq = (int(part) for part in str(gtid).split("-"))
        return encode_gtid(domain, seq), server, gtid_cluster(domain)

    def replay_now(self, driver: Any, dbapi: Any, floor: int) -> int | None:
        applied = scalar_on(driver, dbapi, _APPLIED_SQL)
        return _gtid_position(applied, floor >> DOMAIN_SHIFT)

    def writer(self, connection: Connection) -> int | None:
        binlog: Any = connection.exec_driver_sql(_BINLOG_SQL).one()
        return _gtid_position(binlog[1], int(binlog[0]))

    def replica(self, connection: Connection, writer: int | None) -> ReplicaStatus:
        row: Any = connection.exec_driver_sql(_APPLIED_ROLE_SQL).one()
        behind, streaming = _slave_status(connection)
        domain = 0 if writer is None else writer >> DOMAIN_SHIFT
        # GTIDs give no byte measure; the seconds are the replica's own
        # (NULL while its SQL thread is stopped). A replica is read_only.
        seconds = None if behind is None else float(behind)
        return ReplicaStatus(
            _gtid_position(row[0], domain), None, seconds, bool(row[1]), streaming,
            connection.info.get(SERVER),
        )  # fmt: skip


# ``mysql+...`` URLs (MySQL's own GTIDs, or MariaDB reached through the MySQL
# dialect) have none: they use the time window instead.
_BACKENDS: dict[str, _PostgreSQL | _MariaDB] = {
    "postgresql": _PostgreSQL(),
    "mariadb": _MariaDB(),
}


def has_positions(dialect_name: str) -> bool:
    """Does this backend have replication positions routing_db can compare?"""
    return dialect_name in _BACKENDS


def writer_position_after_commit(
    connection: Connection,
) -> tuple[int, int | None, str] | None:
    """(position, GTID server id, cluster), read on ``connection`` right after
    its COMMIT."""
    backend = _BACKENDS.get(connection.dialect.name)
    if backend is None:
        return None
    proxied = connection.connection
    return backend.after_commit(
        proxied.driver_connection, proxied.dbapi_connection, proxied.info
    )


def replay_position_on(connection: Connection, floor: int) -> int | None:
    """The replay position, in ``floor``'s domain, of the server ``connection``
    reached: asked on that very connection, before its transaction sends
    anything (the read it serves is judged by its own server)."""
    backend = _BACKENDS[connection.dialect.name]
    proxied = connection.connection
    return backend.replay_now(
        proxied.driver_connection, proxied.dbapi_connection, floor
    )


def replay_position_now(engine: Engine, floor: int) -> tuple[int | None, str | None]:
    """A replica's position now, in ``floor``'s domain, on a pooled connection,
    and the server that connection reached."""
    backend = _BACKENDS[engine.dialect.name]
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


class Role(NamedTuple):
    """What a node says of itself when discovery asks."""

    takes_writes: bool
    # PostgreSQL (None elsewhere). A primary: its timeline; one on an older
    # timeline than one seen has been superseded. A standby: the newest
    # timeline it is known to be on (its control file's, which waits for a
    # restartpoint, or the one its WAL receiver streams).
    timeline: int | None
    # A standby's WAL receiver's timeline: None when it has none, or when the
    # role may not see it (pg_read_all_stats).
    receiving: int | None = None


# The primary's timeline is the first 8 hex digits of its current WAL file's
# name (exact at once after a promotion; the control file's waits for a
# checkpoint). A standby cannot name its WAL file: it says what an ordinary
# role can read (the control file's timelines), and what its receiver streams
# where the role may see that.
_RECEIVING = "(SELECT max(received_tli) FROM pg_stat_wal_receiver)"
_ROLE_SQL = {
    "postgresql": "SELECT NOT pg_is_in_recovery(), CASE WHEN pg_is_in_recovery() "
    "THEN GREATEST((pg_control_checkpoint()).timeline_id, "
    f"(pg_control_recovery()).min_recovery_end_timeline, {_RECEIVING}) "
    "ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))"
    f"::bit(32)::int END, CASE WHEN pg_is_in_recovery() THEN {_RECEIVING} END",
    "mysql": "SELECT @@global.read_only = 0, NULL, NULL",
    "mariadb": "SELECT @@global.read_only = 0, NULL, NULL",
}


def role_of(connection: Connection) -> Role:
    """Does the server take writes now, and on which timeline? (Discovery's check.)"""
    row: Any = connection.exec_driver_sql(_ROLE_SQL[connection.dialect.name]).one()
    return Role(
        bool(row[0]),
        None if row[1] is None else int(row[1]),
        None if row[2] is None else int(row[2]),
    )


# Does the server take writes (a primary, not a standby or a read_only replica)?
_TAKES_WRITES_SQL = {
    "postgresql": "SELECT NOT pg_is_in_recovery()",
    "mysql": "SELECT @@global.read_only = 0",
    "mariadb": "SELECT @@global.read_only = 0",
}


def takes_writes_now(engine: Engine) -> bool:
    """Does ``engine``'s server take writes now? (SQLAlchemy's sync layer.)"""
    raw = engine.raw_connection()
    try:
        sql = _TAKES_WRITES_SQL[engine.dialect.name]
        return bool(scalar_on(raw.driver_connection, raw.dbapi_connection, sql))
    finally:
        with contextlib.suppress(Exception):  # returning it to the pool
            raw.close()


def takes_writes(connection: Connection) -> bool:
    """Does the server take writes now? (The monitor's check.)"""
    sql = _TAKES_WRITES_SQL[connection.dialect.name]
    return bool(connection.exec_driver_sql(sql).scalar())


def writer_position_now(engine: Engine) -> tuple[int, str] | None:
    """The writer's newest position and its cluster, on a new connection."""
    with engine.connect() as connection:
        if connection.dialect.name == "postgresql":
            row: Any = connection.exec_driver_sql(_PG_WRITER_CLUSTER_SQL).one()
            return None if row[0] is None else (int(row[0]), str(row[1]))
        position = writer_position(connection)
        if position is None:
            return None
        return position, gtid_cluster(position >> DOMAIN_SHIFT)


def writer_position(connection: Connection) -> int | None:
    """The writer's newest position (for lag), in its own GTID domain."""
    return _BACKENDS[connection.dialect.name].writer(connection)


def _slave_status(connection: Connection) -> tuple[Any, bool | None]:
    """Seconds behind its primary, and whether both replication threads run."""
    try:
        status = connection.exec_driver_sql("SHOW SLAVE STATUS")
    except DBAPIError as exc:
        if is_connection_error(exc):
            raise
        # Without the SLAVE MONITOR privilege: positions still work (any
        # account reads gtid_slave_pos), only the lag and threads are unknown.
        logger.debug("routing_db monitor: SHOW SLAVE STATUS refused: %r", exc)
        connection.rollback()
        return None, None
    slave = status.mappings().first()
    if slave is None:
        return None, False  # not replicating from anything
    running = slave.get("Slave_IO_Running") == "Yes" and (
        slave.get("Slave_SQL_Running") == "Yes"
    )
    return slave.get("Seconds_Behind_Master"), running


def replica_status(connection: Connection, writer: int | None) -> ReplicaStatus:
    """What a replica says of itself; ``writer`` is the writer's position now."""
    status = _BACKENDS[connection.dialect.name].replica(connection, writer)
    if status.position is None or writer is None:
        return status._replace(lag_bytes=None, lag_seconds=None)
    if reached(status.position, writer):
        # Caught up means no lag, however old the last applied transaction
        # is: an idle primary must not look like a lagging one.
        lag_bytes = None if status.lag_bytes is None else 0
        return status._replace(lag_bytes=lag_bytes, lag_seconds=0.0)
    return status
