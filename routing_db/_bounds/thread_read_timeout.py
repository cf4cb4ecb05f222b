"""``replica_read_timeout`` for the sync face: its PostgreSQL drivers, and
the MySQL drivers' own socket timeout.

libpq (psycopg2, psycopg's sync connection) has no client-side read timeout:
a statement on a host that stopped answering waits as long as the host
does. The policy is ``past_bound``'s; this face drives it with one daemon
thread per router (``Sweeper``, stopped when the router is disposed), and
cancels on threads of their own. pymysql and mysqldb bound their socket
reads themselves.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

from sqlalchemy.engine import Engine

from .._backends.connections import driver_of
from .._backends.registry import backend_for
from .._engines.hooks import Hooks
from .connect import MONITOR_PROBING
from .past_bound import ReadBound, swept, timeout_translator

__all__ = ["Sweeper", "install_socket_timeout", "install_thread_read_timeout"]

logger = logging.getLogger("routing_db")


class Sweeper:
    """One router's watched connections, and the daemon thread that sweeps
    them every tenth of the smallest bound; closed with the router's hooks."""

    def __init__(self) -> None:
        self._watched: weakref.WeakSet[Any] = weakref.WeakSet()
        self._lock = threading.Lock()
        self._interval = 1.0
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def watch(self, connection: Any, interval: float) -> None:
        """Sweep ``connection`` from now on, starting the thread if need be."""
        with self._lock:
            self._watched.add(connection)
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
            with self._lock:
                connections = list(self._watched)
            swept(connections, time.monotonic())


def install_thread_read_timeout(
    engine: Engine,
    hooks: Hooks,
    seconds: float,
    *,
    timed_out: Callable[[BaseException], None],
) -> None:
    """Bound each statement, COMMIT and ROLLBACK on ``engine``, a sync
    replica, to ``seconds``, where its driver has no bound of its own.
    Install it after every other ``do_connect`` hook. A ``cursor_factory`` in
    ``connect_args`` wins (its statements are not bounded)."""
    backend = backend_for(engine.dialect.name)
    if backend is None:
        return
    sweeper = hooks.worker("thread read timeout", Sweeper)

    def cancel(statement: str) -> None:
        # A thread of its own: a server that stopped would not answer it.
        threading.Thread(
            target=_cancelled, args=(engine, statement), daemon=True
        ).start()

    bound = ReadBound(seconds, watcher=sweeper, cancel=cancel, timed_out=timed_out)
    bounded = backend.read_timeout(engine.dialect.driver, bound, is_async=False)
    if bounded is None:
        return
    connect = bounded.connect

    def with_bound(
        dialect: Any, record: Any, cargs: Any, cparams: dict[str, Any]
    ) -> Any:
        for key, value in bounded.arguments.items():
            cparams.setdefault(key, value)
        # psycopg makes its connection in Connection.connect(): this makes
        # it, so it is the last do_connect hook (see hook_replica).
        return None if connect is None else connect(*cargs, **cparams)

    def resetting(dbapi_connection: Any, record: Any, reset_state: Any) -> None:
        # The pool's ROLLBACK as the connection comes back: on a host that
        # stopped, it would hold the thread that closes the session.
        connection = driver_of(dbapi_connection)
        if hasattr(connection, "routing_db_running"):
            connection.routing_db_since = time.monotonic()

    def checked_in(dbapi_connection: Any, record: Any) -> None:
        if dbapi_connection is not None:
            connection = driver_of(dbapi_connection)
            if hasattr(connection, "routing_db_running"):
                connection.routing_db_since = None

    hooks.listen(engine, "do_connect", with_bound)
    hooks.listen(engine, "reset", resetting)
    hooks.listen(engine, "checkin", checked_in)
    hooks.listen(engine, "handle_error", timeout_translator(seconds))


def _cancelled(engine: Engine, statement: str) -> None:
    # An ejected replica takes only the monitor's connections: this is one
    # of those.
    probing = MONITOR_PROBING.set(True)
    try:
        with engine.connect() as connection:
            connection.exec_driver_sql(statement)
    except Exception as exc:  # the connection is cut anyway
        logger.debug("cancelling a replica statement: %r", exc)
    finally:
        MONITOR_PROBING.reset(probing)


def install_socket_timeout(engine: Engine, hooks: Hooks, seconds: float) -> None:
    """Bound each read of ``engine``'s (a sync replica's) socket, where its
    driver can; arguments in ``connect_args`` win."""
    backend = backend_for(engine.dialect.name)
    arguments = (
        {}
        if backend is None
        else backend.socket_timeout_args(engine.dialect.driver, seconds)
    )
    if not arguments:
        return

    def bounded(dialect: Any, record: Any, cargs: Any, cparams: dict[str, Any]) -> None:
        for key, value in arguments.items():
            cparams.setdefault(key, value)

    hooks.listen(engine, "do_connect", bounded)
