"""MySQL and MariaDB, and their drivers: aiomysql and asyncmy (asyncio),
pymysql and mysqldb (sync).

A replica is a server with ``read_only`` on. Positions are MariaDB's GTIDs:
a sequence number within its replication domain, the domain being the
cluster. ``mysql+...`` URLs (MySQL's own GTIDs, or MariaDB reached through
the MySQL dialect) have none: they use the time window instead.
"""

from __future__ import annotations

import importlib
import logging
import math
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError

from .._causal.floor import DOMAIN_SHIFT, encode_gtid, gtid_cluster
from .._compat import aiomysql_open, mysql_socket, mysql_transport
from .._retry import is_connection_error
from .backend import (
    Backend,
    Bound,
    Bounded,
    Found,
    ReplicaStatus,
    Watched,
    readable,
    watched_async,
)

__all__ = ["MariaDB", "MySQL"]

logger = logging.getLogger("routing_db")

# The GTID of this session's last commit; what a replica has applied
# (gtid_slave_pos moves only when the SQL thread applies a transaction).
_LAST_GTID_SQL = "SELECT @@last_gtid"
_APPLIED_SQL = "SELECT @@global.gtid_slave_pos"
_APPLIED_ROLE_SQL = "SELECT @@global.gtid_slave_pos, @@global.read_only"
_BINLOG_SQL = "SELECT @@global.gtid_domain_id, @@global.gtid_binlog_pos"
# server_id is unique within a replication topology (replication requires
# it); a GTID position is compared within its domain, and the domains a
# replica has applied are its clusters.
_SETUP_SQL = (
    "SELECT @@global.read_only, concat_ws(' ', @@hostname, @@port, "
    "@@server_id), @@global.gtid_slave_pos"
)


def _creator(module: str) -> Any:
    return lambda: importlib.import_module(module).connect


def _gtid_position(gtid_list: str | None, domain: int) -> int | None:
    # "0-1-42,1-3-7": one GTID per domain.
    for gtid in (gtid_list or "").split(","):
        parts = gtid.strip().split("-")
        if len(parts) == 3 and int(parts[0]) == domain:
            return encode_gtid(domain, int(parts[2]))
    return None


class MySQL(Backend):
    """MySQL (and MariaDB through the MySQL dialect): ``read_only`` replicas,
    ``KILL QUERY``; no positions."""

    name = "mysql"
    async_drivers = frozenset({"aiomysql", "asyncmy"})
    async_default = "aiomysql"
    sync_drivers = frozenset({"pymysql", "mysqldb"})
    sync_default = "pymysql"
    creators: ClassVar[Mapping[str, Callable[[], Any]]] = {
        "aiomysql": _creator("aiomysql"),
        "asyncmy": _creator("asyncmy"),
    }
    takes_writes_sql = "SELECT @@global.read_only = 0"
    standby_sql = "SELECT @@global.read_only"
    replicates = True
    cancel_sql = "KILL QUERY {}"

    def setup_replica(self, cursor: Any) -> Found:
        cursor.execute("SET SESSION TRANSACTION READ ONLY")
        cursor.execute(_SETUP_SQL)
        row = cursor.fetchone()
        domains = {gtid.split("-")[0] for gtid in (row[2] or "").split(",") if gtid}
        clusters = frozenset(f"d{domain.strip()}" for domain in domains)
        return Found(bool(row[0]), row[1], clusters or None)

    # -- driver connections -------------------------------------------------

    def owns(self, driver_connection: Any) -> bool:
        return hasattr(driver_connection, "thread_id")

    def session_id(self, driver_connection: Any) -> int | None:
        try:
            thread_id = driver_connection.thread_id
            return int(thread_id() if callable(thread_id) else thread_id)
        except Exception:  # closed already
            return None

    def socket_of(self, driver_connection: Any) -> int | None:
        try:
            return mysql_socket(driver_connection)
        except Exception:  # closed already
            return None

    def says_closed(self, driver_connection: Any) -> bool:
        closed = getattr(driver_connection, "closed", None)  # aiomysql, asyncmy
        if isinstance(closed, bool) and closed:
            return True
        transport = mysql_transport(driver_connection)
        if transport is not None and transport.is_closing():
            return True  # asyncmy closes its transport at the end of the stream
        fd = mysql_socket(driver_connection)
        if fd is not None and readable(fd):
            # aiomysql and pymysql notice a closed socket only when a
            # statement sent on it fails, and a write that may have been sent
            # is never rerun. A MySQL server sends nothing unasked: on an idle
            # connection anything to read (the end of the stream after a
            # crash, or a KILL's error) means the server is ending it.
            return True
        return getattr(driver_connection, "open", True) is False  # pymysql, mysqldb

    def connect_timeout_args(self, driver: str, seconds: float) -> dict[str, Any]:
        return {"connect_timeout": seconds}  # the TCP connect only: see below

    def greeting_unbounded(self, driver: str) -> bool:
        # aiomysql's and asyncmy's connect_timeout covers the TCP connect
        # only: a host that accepts and never sends its greeting would hold
        # the connect for ever. pymysql's and mysqldb's cover the greeting.
        return driver in self.async_drivers

    def read_timeout(
        self, driver: str, bound: Bound, *, is_async: bool
    ) -> Bounded | None:
        if not is_async:
            return None  # their own socket timeout instead
        base = importlib.import_module(driver).Connection

        class BoundedConnection(Watched, base):  # type: ignore[misc,valid-type]
            routing_db_bound = bound
            # Every cursor's statement goes through query(); SQLAlchemy's
            # ping at checkout is COM_PING, not a query.
            query = watched_async(base.query)
            ping = watched_async(base.ping)
            commit = watched_async(base.commit)
            rollback = watched_async(base.rollback)

        async def connect(**kwargs: Any) -> Any:
            connection = BoundedConnection(**kwargs)
            if driver == "aiomysql":
                return await aiomysql_open(connection)
            await connection.connect()  # what asyncmy.connect() does
            return connection

        return Bounded({"async_creator_fn": connect})

    def socket_timeout_args(self, driver: str, seconds: float) -> dict[str, Any]:
        # A statement past it fails as a lost connection (a first statement
        # runs again elsewhere and ejects the replica).
        if driver in self.sync_drivers:
            return {"read_timeout": math.ceil(seconds)}
        return {}


class MariaDB(MySQL):
    """MariaDB through its own dialect: GTID positions too."""

    name = "mariadb"
    has_positions = True

    def after_commit(
        self, driver: Any, dbapi: Any, info: dict[Any, Any]
    ) -> tuple[int, int | None, str] | None:
        row = self.one_row(driver, dbapi, _LAST_GTID_SQL)
        gtid = row[0] if row else None
        if not gtid:
            return None
        domain, server, seq = (int(part) for part in str(gtid).split("-"))
        return encode_gtid(domain, seq), server, gtid_cluster(domain)

    def replay_now(self, driver: Any, dbapi: Any, floor: int) -> int | None:
        row = self.one_row(driver, dbapi, _APPLIED_SQL)
        return _gtid_position(row[0] if row else None, floor >> DOMAIN_SHIFT)

    def writer(self, connection: Connection) -> int | None:
        binlog: Any = connection.exec_driver_sql(_BINLOG_SQL).one()
        return _gtid_position(binlog[1], int(binlog[0]))

    def writer_now(self, connection: Connection) -> tuple[int, str] | None:
        position = self.writer(connection)
        if position is None:
            return None
        return position, gtid_cluster(position >> DOMAIN_SHIFT)

    def replica(self, connection: Connection, writer: int | None) -> ReplicaStatus:
        row: Any = connection.exec_driver_sql(_APPLIED_ROLE_SQL).one()
        behind, streaming = _slave_status(connection)
        domain = 0 if writer is None else writer >> DOMAIN_SHIFT
        # GTIDs give no byte measure; the seconds are the replica's own
        # (NULL while its SQL thread is stopped). A replica is read_only.
        seconds = None if behind is None else float(behind)
        return ReplicaStatus(
            _gtid_position(row[0], domain), None, seconds, bool(row[1]), streaming
        )


def _slave_status(connection: Connection) -> tuple[Any, bool | None]:
    """Seconds behind its primary, and whether both replication threads run."""
    try:
        status = connection.exec_driver_sql("SHOW SLAVE STATUS")
    except DBAPIError as exc:
        if is_connection_error(exc):
            raise
        # Without the SLAVE MONITOR privilege: positions still work (any
        # account reads gtid_slave_pos), only the lag and threads are unknown.
        logger.debug("monitor: SHOW SLAVE STATUS refused: %r", exc)
        connection.rollback()
        return None, None
    slave = status.mappings().first()
    if slave is None:
        return None, False  # not replicating from anything
    running = slave.get("Slave_IO_Running") == "Yes" and (
        slave.get("Slave_SQL_Running") == "Yes"
    )
    return slave.get("Seconds_Behind_Master"), running
