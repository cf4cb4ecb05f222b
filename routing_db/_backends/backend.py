"""``Backend``: what routing_db asks of a database backend and its drivers.

Each backend (``postgresql``, ``mysql``, ``sqlite``) is one module holding a
subclass: its drivers, its SQL for roles, positions and cancels, how a
replica's connection is set up, and what its driver connections tell
(their socket, their session's id, whether the server closed them). The
rest of routing_db asks the backend of a dialect or of a driver connection
(``registry``) and never names a driver.
"""

from __future__ import annotations

import contextlib
import select
import socket
import time
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, NamedTuple, Protocol

from sqlalchemy.engine import URL, Connection

from .._causal.floor import reached
from .._exceptions import ConfigurationError

__all__ = [
    "CLUSTERS",
    "SERVER",
    "Backend",
    "Bound",
    "Bounded",
    "Found",
    "ReplicaStatus",
    "Role",
    "Watched",
    "clusters_of",
    "readable",
    "shut_down",
    "watched",
    "watched_async",
]

# What a connection's record knows of the server it reached (learned once,
# when the connection is made): which server, and the clusters whose
# positions it replays. Behind one URL (a reader endpoint) connections reach
# different servers: positions are facts about servers, not engines.
SERVER = "routing_db.server"
CLUSTERS = "routing_db.clusters"


def clusters_of(info: dict[Any, Any]) -> frozenset[str] | None:
    """The clusters a connection's server replays (None: not known)."""
    clusters: frozenset[str] | None = info.get(CLUSTERS)
    return clusters


class Found(NamedTuple):
    """What a replica's new connection finds about the server it reached."""

    standby: bool
    # Which server: the same on every connection to it, and different after
    # it restarted (a standby rewound onto a new timeline restarts behind
    # what it had replayed: its position is learned again). None: one file.
    server: str | None
    # The clusters whose positions it replays (None: cannot tell).
    clusters: frozenset[str] | None


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


class Role(NamedTuple):
    """What a node says of itself when discovery asks."""

    takes_writes: bool
    # PostgreSQL (None elsewhere). A primary: its timeline; one on an older
    # timeline than one seen has been superseded. A standby: the newest
    # timeline it is known to be on.
    timeline: int | None
    # A standby's WAL receiver's timeline: None when it has none, or when the
    # role may not see it.
    receiving: int | None = None


def readable(fd: int) -> bool:
    """Is there anything to read on ``fd`` now (without reading it)?"""
    if hasattr(select, "poll"):  # no FD_SETSIZE limit, unlike select()
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        return bool(poller.poll(0))
    found, _, _ = select.select([fd], [], [], 0)
    return bool(found)


def shut_down(fd: int) -> bool:
    """Shut a connection's socket down (whether it could be): the driver
    fails what it waits for, or its next statement, as a lost connection."""
    # Shut down, not closed: the file descriptor stays the driver's to close.
    try:
        with socket.fromfd(fd, socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        return False
    return True


class Bound(Protocol):
    """A replica engine's read bound, as its watched connections see it."""

    seconds: float

    def watch(self, connection: Any) -> None:
        """Look at ``connection``'s statements from now on."""


class _Running:
    """``with connection.routing_db_running:`` around a statement, so the
    bound knows since when it runs (one per connection: nothing is made per
    statement)."""

    __slots__ = ("_connection",)

    def __init__(self, connection: Watched) -> None:
        self._connection = connection

    def __enter__(self) -> None:
        self._connection.routing_db_since = time.monotonic()

    def __exit__(self, *exc_info: object) -> None:
        self._connection.routing_db_since = None


def _running_of(connection: Any) -> Any:
    # A connection of another class (connect_args' own) is not watched.
    return getattr(connection, "routing_db_running", None) or contextlib.nullcontext()


def _itself(connection: Any) -> Any:
    return connection


def _its_connection(cursor: Any) -> Any:
    return cursor.connection


def watched(method: Callable[..., Any], *, cursor: bool = False) -> Any:
    """``method`` of a driver's connection (``cursor``: of its cursor class),
    run as its connection's watched statement."""
    of = _its_connection if cursor else _itself

    def run(self: Any, *args: Any, **kw: Any) -> Any:
        with _running_of(of(self)):
            return method(self, *args, **kw)

    return run


def watched_async(method: Callable[..., Any], *, cursor: bool = False) -> Any:
    """``watched`` for a coroutine method: the watch lasts until it is done."""
    of = _its_connection if cursor else _itself

    async def run(self: Any, *args: Any, **kw: Any) -> Any:
        with _running_of(of(self)):
            return await method(self, *args, **kw)

    return run


class Watched:
    """Mixed into a driver's connection class by its backend: since when its
    statement runs, for the engine's read bound (``_bounds``) to read."""

    routing_db_bound: ClassVar[Bound]  # set on each engine's class
    routing_db_since: float | None = None  # when the running statement began
    routing_db_expired = False  # ran past the bound: its error is a timeout

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.routing_db_running = _Running(self)
        self.routing_db_bound.watch(self)


class Bounded(NamedTuple):
    """How a driver's connections get ``Watched``: connect arguments, and for
    a sync driver that makes its connection in a class method, that method
    (called in ``do_connect``)."""

    arguments: dict[str, Any]
    connect: Callable[..., Any] | None = None


class Backend:
    """One backend's knowledge; the defaults are a backend's without
    replication (SQLite)."""

    name: ClassVar[str]
    # Drivers accepted for each face, and the one to suggest.
    async_drivers: ClassVar[frozenset[str]]
    async_default: ClassVar[str]
    sync_drivers: ClassVar[frozenset[str]]
    sync_default: ClassVar[str]
    # A driver's pip package, where it is not the driver's name.
    packages: ClassVar[Mapping[str, str]] = {}
    # What each asyncio DBAPI adapter calls to connect, unless given one.
    creators: ClassVar[Mapping[str, Callable[[], Callable[..., Any]]]] = {}
    # Does the server take writes / is it a standby (None: no replication)?
    takes_writes_sql: ClassVar[str | None] = None
    standby_sql: ClassVar[str | None] = None
    # How the server is asked to stop one session's statement ({} its id).
    cancel_sql: ClassVar[str | None] = None
    # Replicas replicate (a SQLite "replica" is the writer's own file: the
    # monitor has nothing to learn of it until a read fails on it).
    replicates: ClassVar[bool] = False
    # Replication positions routing_db can compare (see positions).
    has_positions: ClassVar[bool] = False

    def setup_replica(self, cursor: Any) -> Found:
        """Make a replica's new connection read-only; what it reached."""
        raise NotImplementedError

    def role(self, connection: Connection) -> Role:
        """Does the server take writes now, and on which timeline?"""
        sql = self.takes_writes_sql
        takes_writes = sql is None or bool(connection.exec_driver_sql(sql).scalar())
        return Role(takes_writes, None)

    def behind_pgbouncer(
        self, url: URL, kwargs: dict[str, Any]
    ) -> tuple[URL, dict[str, Any]]:
        """``url`` and engine ``kwargs`` for PgBouncer's transaction pooling."""
        raise ConfigurationError(
            f"pgbouncer=True is for PostgreSQL URLs (asyncpg or psycopg), "
            f"not {url.drivername}"
        )

    # -- positions (backends with has_positions) ---------------------------

    def after_commit(
        self, driver: Any, dbapi: Any, info: dict[Any, Any]
    ) -> tuple[int, int | None, str] | None:
        """(position, GTID server id, cluster) right after a COMMIT."""
        return None

    def replay_now(self, driver: Any, dbapi: Any, floor: int) -> int | None:
        """A replica's replay position now, in ``floor``'s domain."""
        raise NotImplementedError

    def writer(self, connection: Connection) -> int | None:
        """The writer's newest position, in its own domain."""
        raise NotImplementedError

    def writer_now(self, connection: Connection) -> tuple[int, str] | None:
        """The writer's newest position and its cluster."""
        raise NotImplementedError

    def replica(self, connection: Connection, writer: int | None) -> ReplicaStatus:
        """What a replica says of itself (lag unadjusted, server unset)."""
        raise NotImplementedError

    # -- driver connections -------------------------------------------------

    def owns(self, driver_connection: Any) -> bool:
        """Is this a connection of one of this backend's drivers?"""
        return False

    def one_row(self, driver_connection: Any, dbapi_connection: Any, sql: str) -> Any:
        """One row of ``sql`` outside any transaction of SQLAlchemy's."""
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(sql)
            row = cursor.fetchone()
        finally:
            cursor.close()
        dbapi_connection.rollback()
        return row

    def session_id(self, driver_connection: Any) -> int | None:
        """The server's id of this connection's session (what a cancel names)."""
        return None

    def socket_of(self, driver_connection: Any) -> int | None:
        """The file descriptor of the connection's socket (None: none)."""
        return None

    def discard(self, driver_connection: Any) -> None:
        """End the connection at once, without a goodbye to the server."""
        fd = self.socket_of(driver_connection)
        if fd is not None:
            shut_down(fd)

    def says_closed(self, driver_connection: Any) -> bool:
        """What the driver knows about its socket, without any I/O."""
        return False

    def connect_timeout_args(self, driver: str, seconds: float) -> dict[str, Any]:
        """The driver's connect arguments bounding a connect ({}: no network)."""
        return {}

    def greeting_unbounded(self, driver: str) -> bool:
        """Does ``driver``'s connect timeout leave the server's greeting unbounded?"""
        return False

    def read_timeout(
        self, driver: str, bound: Bound, *, is_async: bool
    ) -> Bounded | None:
        """How ``driver``'s connections are ``Watched`` by ``bound``, their
        statements and transaction ends (None: they cannot be, or need not)."""
        return None

    def socket_timeout_args(self, driver: str, seconds: float) -> dict[str, Any]:
        """A sync driver's own socket read timeout ({}: it has none)."""
        return {}
