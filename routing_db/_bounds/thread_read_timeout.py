"""``replica_read_timeout`` for the sync face: its PostgreSQL drivers, and
the MySQL drivers' own socket timeout.

libpq (psycopg2, psycopg's sync connection) has no client-side read timeout:
a statement on a host that stopped answering waits as long as the host
does. As on asyncio, nothing is armed per statement: each connection has a
small record of when its statement began (set by a cursor class of
routing_db's, and around the pool's ROLLBACK on return), and one daemon
thread per router (stopped when the router is disposed) looks every tenth
of the bound; past it, the server is asked to stop the statement (over
another connection, on a thread of its own), the socket is cut, and the
statement raises ``ReplicaReadTimeout``. pymysql bounds its socket reads
itself.
"""

from __future__ import annotations

import importlib
import logging
import math
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

from sqlalchemy.engine import Engine

from .._backends.connections import cut, driver_of
from .._engines.hooks import Hooks
from .connect import MONITOR_PROBING
from .past_bound import CANCEL, backend_id, expired, timeout_error, timeout_translator

__all__ = ["install_socket_timeout", "install_thread_read_timeout"]

logger = logging.getLogger("routing_db")


class _Running:
    """One connection's statement: since when, and its bound."""

    __slots__ = ("bound", "cancel", "since", "timed_out")

    def __init__(
        self,
        bound: float,
        cancel: Callable[[int], None],
        timed_out: Callable[[BaseException], None],
    ) -> None:
        self.bound = bound
        self.cancel = cancel
        self.timed_out = timed_out  # its replica is ejected
        self.since: float | None = None

    def __enter__(self) -> None:
        self.since = time.monotonic()

    def __exit__(self, *exc_info: object) -> None:
        self.since = None


class Sweeper:
    """One router's watched connections, and the daemon thread that looks at
    them every tenth of the smallest bound; closed with the router's hooks."""

    def __init__(self) -> None:
        # Driver connection -> its record; weakly, so a discarded one is forgotten.
        self.running: weakref.WeakKeyDictionary[Any, _Running] = (
            weakref.WeakKeyDictionary()
        )
        self._lock = threading.Lock()
        self._interval = 1.0
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def watch(self, connection: Any, running: _Running) -> None:
        """Watch ``connection``'s statements, starting the thread if need be."""
        # A statement is cut between 1 and 1.1 times the bound after it began.
        interval = min(1.0, max(0.05, running.bound / 10))
        with self._lock:
            self.running[connection] = running
            self._interval = min(self._interval, interval)
            if self._thread is not None or self._stopping.is_set():
                return
            self._thread = threading.Thread(
                target=self._sweep, name="routing_db read timeout", daemon=True
            )
        self._thread.start()

    def close(self) -> None:
        """Stop the thread (it ends within one interval, at most a second)."""
        self._stopping.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=1.0)

    def _sweep(self) -> None:
        while not self._stopping.wait(self._interval):
            now = time.monotonic()
            with self._lock:
                items = list(self.running.items())
            for connection, running in items:
                since = running.since
                if since is not None and now - since > running.bound:
                    running.since = None  # cut once
                    _expire(connection, running)


def _expire(connection: Any, running: _Running) -> None:
    expired.add(connection)
    # Ejected now, whatever was running (a statement, the pool's ping or
    # ROLLBACK): no new work goes to the host meanwhile.
    running.timed_out(timeout_error(running.bound))
    backend = backend_id(connection)
    if backend is not None:
        # The server may only be slow; a thread of its own, since a server
        # that stopped would not answer the cancel either.
        threading.Thread(target=running.cancel, args=(backend,), daemon=True).start()
    cut(connection)


def _watched(
    method: Callable[..., Any], running: weakref.WeakKeyDictionary[Any, _Running]
) -> Callable[..., Any]:
    """``method`` of a connection or cursor, run inside its connection's record."""

    def run(self: Any, *args: Any, **kw: Any) -> Any:
        connection = self if hasattr(self, "cursor") else self.connection
        record = running.get(connection)
        if record is None:
            return method(self, *args, **kw)
        with record:
            return method(self, *args, **kw)

    return run


def _classes(
    driver: str, running: weakref.WeakKeyDictionary[Any, _Running]
) -> tuple[Any, type]:
    """The driver's connection and cursor classes, their work watched: the
    cursors' statements, the connection's COMMIT and ROLLBACK (the end of a
    replica's read-only transaction)."""
    if driver == "psycopg2":
        module = importlib.import_module("psycopg2.extensions")
        connection, cursor = module.connection, module.cursor
    else:
        module = importlib.import_module("psycopg")
        connection, cursor = module.Connection, module.Cursor

    class BoundedConnection(connection):  # type: ignore[valid-type,misc]
        commit = _watched(connection.commit, running)
        rollback = _watched(connection.rollback, running)

    class BoundedCursor(cursor):  # type: ignore[valid-type,misc]
        execute = _watched(cursor.execute, running)
        executemany = _watched(cursor.executemany, running)

    return BoundedConnection, BoundedCursor


def _canceller(engine: Engine, seconds: float) -> Callable[[int], None]:
    statement = CANCEL[engine.dialect.name]

    def cancel(backend: int) -> None:
        # An ejected replica takes only the monitor's connections: this is
        # one of those.
        probing = MONITOR_PROBING.set(True)
        try:
            with engine.connect() as connection:
                connection.exec_driver_sql(statement.format(backend))
        except Exception as exc:  # the connection is cut anyway
            logger.debug("routing_db: cancelling a replica statement: %r", exc)
        finally:
            MONITOR_PROBING.reset(probing)

    return cancel


def install_thread_read_timeout(
    engine: Engine,
    hooks: Hooks,
    seconds: float,
    *,
    timed_out: Callable[[BaseException], None],
) -> None:
    """Bound each statement, COMMIT and ROLLBACK on ``engine``, a sync
    PostgreSQL replica, to ``seconds``. Install it after every other
    ``do_connect`` hook. A ``cursor_factory`` in ``connect_args`` wins (its
    statements are not bounded)."""
    driver = engine.dialect.driver
    if driver not in ("psycopg2", "psycopg"):
        return
    sweeper = hooks.worker("thread read timeout", Sweeper)
    connection_class, cursor_class = _classes(driver, sweeper.running)
    cancel = _canceller(engine, seconds)

    def bounded(dialect: Any, record: Any, cargs: Any, cparams: dict[str, Any]) -> Any:
        cparams.setdefault("cursor_factory", cursor_class)
        if driver == "psycopg2":
            cparams.setdefault("connection_factory", connection_class)
            return None
        # psycopg makes its connection in Connection.connect(): this makes
        # it, so it is the last do_connect hook (see hook_replica).
        return connection_class.connect(*cargs, **cparams)

    def connected(dbapi_connection: Any, record: Any) -> None:
        sweeper.watch(driver_of(dbapi_connection), _Running(seconds, cancel, timed_out))

    def resetting(dbapi_connection: Any, record: Any, reset_state: Any) -> None:
        # The pool's ROLLBACK as the connection comes back: on a host that
        # stopped, it would hold the thread that closes the session.
        running = sweeper.running.get(driver_of(dbapi_connection))
        if running is not None:
            running.since = time.monotonic()

    def checked_in(dbapi_connection: Any, record: Any) -> None:
        if dbapi_connection is not None:
            running = sweeper.running.get(driver_of(dbapi_connection))
            if running is not None:
                running.since = None

    hooks.listen(engine, "do_connect", bounded)
    hooks.listen(engine, "connect", connected)
    hooks.listen(engine, "reset", resetting)
    hooks.listen(engine, "checkin", checked_in)
    hooks.listen(engine, "handle_error", timeout_translator(seconds))


# The sync drivers' own socket timeouts: a statement past it fails as a lost
# connection (a first statement runs again elsewhere and ejects the replica).
# psycopg2 and psycopg's sync connection have none: libpq waits for ever.
_SOCKET_TIMEOUT = {"pymysql": "read_timeout", "mysqldb": "read_timeout"}


def install_socket_timeout(engine: Engine, hooks: Hooks, seconds: float) -> None:
    """Bound each read of ``engine``'s (a sync replica's) socket, where its
    driver can; arguments in ``connect_args`` win."""
    argument = _SOCKET_TIMEOUT.get(engine.dialect.driver)
    if argument is None:
        return

    def bounded(dialect: Any, record: Any, cargs: Any, cparams: dict[str, Any]) -> None:
        cparams.setdefault(argument, math.ceil(seconds))

    hooks.listen(engine, "do_connect", bounded)
