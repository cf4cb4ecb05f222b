"""A replica statement past its bound: the policy both faces drive.

A bounded replica engine's driver connections are ``Watched`` (its backend
makes them so): each knows since when its statement runs. A face's driver
(an event loop's timer, or a thread) sweeps them every tenth of the bound;
past it the replica is ejected, the server is asked to stop the statement
(the server may only be slow; over another connection, in the background),
and the socket is cut at once (a server that stopped would answer neither).
The statement then fails as a lost connection, and its error becomes
``ReplicaReadTimeout``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Protocol

from .._backends.connections import cut
from .._backends.registry import backend_of
from .._exceptions import ReplicaReadTimeout

__all__ = [
    "ReadBound",
    "Watcher",
    "sweep_interval",
    "swept",
    "timeout_error",
    "timeout_translator",
]


class Watcher(Protocol):
    """A face's driver: sweeps the connections it was given (``swept``)."""

    def watch(self, connection: Any, interval: float) -> None:
        """Sweep ``connection`` every ``interval`` seconds or more often."""


def sweep_interval(seconds: float) -> float:
    """How often to look: a statement is cut between 1 and 1.1 times the
    bound after it began."""
    return min(1.0, max(0.05, seconds / 10))


class ReadBound:
    """One replica engine's bound: its watched connections, and what is done
    to one whose statement ran past it."""

    def __init__(
        self,
        seconds: float,
        *,
        watcher: Watcher,
        cancel: Callable[[str], None],
        timed_out: Callable[[BaseException], None],
    ) -> None:
        self.seconds = seconds
        self._watcher = watcher
        self._cancel = cancel  # runs a cancel statement, in the background
        self._timed_out = timed_out  # its replica is ejected

    def watch(self, connection: Any) -> None:
        """Sweep ``connection`` from now on (a ``Watched`` calls it when made)."""
        self._watcher.watch(connection, sweep_interval(self.seconds))

    def expire(self, connection: Any) -> None:
        """``connection``'s statement ran past the bound."""
        connection.routing_db_expired = True
        # Ejected now, whatever was running (a statement, the pool's ping or
        # ROLLBACK): no new work goes to the host meanwhile.
        self._timed_out(timeout_error(self.seconds))
        backend = backend_of(connection)
        session = backend.session_id(connection)
        if session is not None and backend.cancel_sql is not None:
            self._cancel(backend.cancel_sql.format(session))
        cut(connection)


def swept(connections: Iterable[Any], now: float) -> None:
    """Expire, once, each connection whose statement runs past its bound."""
    for connection in connections:
        since = connection.routing_db_since
        bound = connection.routing_db_bound
        if since is not None and now - since > bound.seconds:
            connection.routing_db_since = None  # cut once
            bound.expire(connection)


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


def timeout_translator(seconds: float) -> Callable[[Any], BaseException | None]:
    """A ``handle_error`` hook: the error of a statement cut past the bound
    becomes ``ReplicaReadTimeout`` (either face)."""

    def translate(context: Any) -> BaseException | None:
        connection = context.connection
        if connection is None or connection.invalidated:
            return None  # connecting: connect_timeout's, not ours
        driver_connection = connection.connection.driver_connection
        if not getattr(driver_connection, "routing_db_expired", False):
            return None
        driver_connection.routing_db_expired = False
        error = context.original_exception
        # At once: SQLAlchemy closes an invalidated connection gracefully,
        # which waits on a server that does not answer.
        backend_of(driver_connection).discard(driver_connection)
        context.is_disconnect = True
        return timeout_error(seconds, context.statement, context.parameters, error)

    return translate
