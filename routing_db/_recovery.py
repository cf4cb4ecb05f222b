"""What a routing session does when connections fail or die.

The first statement of a transaction that could not get a connection, or lost
its replica before returning anything, runs again elsewhere; a replica's
read-only transaction never makes COMMIT, rollback or close fail. Private
session internals touched here are wrapped in ``_connections``.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from ._connections import (
    checkout_failed,
    close_quietly,
    driver_says_closed,
    forget,
    leave_out_of_commit,
    marked_for_rerun,
)
from ._retry import is_connection_error, is_recovery_conflict

if TYPE_CHECKING:
    from ._router import Router

__all__ = ["FRESH_TRANSACTION", "RecoveringSession", "first_statement"]

logger = logging.getLogger("routing_db")
T = TypeVar("T")


def _now(error: BaseException) -> bool:
    return bool(getattr(error, "_routing_db_now", False))


FRESH_TRANSACTION: dict[str, Any] = {
    "_routing_fresh": True,
    "_routing_replica": None,
    "_routing_replica_connection": None,
    "_routing_writer_connection": None,
    "_routing_wrote": False,
    "_routing_fallback": False,
    "_routing_excluded": frozenset(),
    "_routing_target": None,
}


def first_statement(method: Callable[..., Any]) -> Any:
    """``method`` of ``Session``, rerun elsewhere when a transaction's first
    statement lost its connection before returning anything."""

    @functools.wraps(method)
    def run(self: RecoveringSession, *args: Any, **kw: Any) -> Any:
        # One frame on the hot path: "fresh" is read before the call, since
        # the failed call itself may have begun a connection.
        fresh = self._routing_fresh
        try:
            return method(self, *args, **kw)
        except Exception as exc:
            if not (fresh and self._routing_recover(exc)):
                raise
        return self._routing_again(functools.partial(method, self), *args, **kw)

    return run


class RecoveringSession(Session):
    """A ``Session`` whose first statements survive lost connections."""

    _routing_router: Router | None = None
    # No connection has begun in this root transaction yet (set per instance
    # for routed sessions; a session without a router never recovers).
    _routing_fresh = False
    # Per-transaction state; class-level defaults, reset at the end of each
    # root transaction (FRESH_TRANSACTION).
    _routing_replica: Engine | None = None
    _routing_replica_connection: Connection | None = None
    _routing_writer_connection: Connection | None = None
    _routing_wrote = False
    _routing_fallback = False  # counted against max_writer_fallbacks
    _routing_excluded: frozenset[Engine] = frozenset()
    # The engine get_bind last chose: if its connection cannot be had, that is
    # the one to skip (and, for a replica, eject) on the next attempt.
    _routing_target: Engine | None = None

    def _routing_open_writer(self, router: Router) -> None:
        # Nothing has been sent on this transaction's writer connection yet, so
        # a failure to get one is always safe to retry (after a restart, say).
        writer = router._sync_writer
        router.retry.call(
            lambda: self._connection_for_bind(writer, None), retry_if=checkout_failed
        )

    def _routing_recover(self, error: BaseException) -> bool:
        """After this transaction's first statement failed: may it run again?"""
        router = self._routing_router
        if router is None:
            return False
        if not self.is_active:
            return False  # a failed flush: the session must be rolled back first
        if (
            self._routing_replica_connection is None
            and self._routing_writer_connection is None
        ):
            # No connection could be had, so nothing was sent: run it again,
            # on another replica if it was one (not waiting), else the writer.
            if not checkout_failed(error):
                return False
            target = self._routing_target
            if target is not None and target in router._replica_set:
                if not isinstance(error, sa_exc.TimeoutError):
                    # A full pool is busy, not broken: skip it, don't eject it.
                    router._replica_set.failed(target, error)
                self._routing_excluded = self._routing_excluded | {target}
                error._routing_db_now = True  # type: ignore[attr-defined]
            return True
        # The first statement failed on its replica because the connection was
        # lost or the standby cancelled it for a recovery conflict: no result
        # was returned and nothing was written, so it can run elsewhere.
        if isinstance(error, DBAPIError) and self._routing_rerunnable(error):
            self._routing_drop_replica(error)
            error._routing_db_now = True  # type: ignore[attr-defined]
            return True
        return False

    def _routing_again(self, method: Callable[..., T], *args: Any, **kw: Any) -> T:
        router = self._routing_router
        assert router is not None

        def attempt() -> T:
            try:
                return method(*args, **kw)
            except Exception as exc:
                if self._routing_recover(exc):
                    exc._routing_db_rerun = True  # type: ignore[attr-defined]
                raise

        # Skipping a replica does not use up an attempt: every replica may be
        # tried, then the writer as the policy allows.
        retrying = router.retry.again(
            marked_for_rerun, extra_attempts=len(router.replicas), no_wait_if=_now
        )
        try:
            result = retrying(attempt)
        except Exception:
            router._listeners.emit("retried", "first_statement", "failed")
            raise
        router._listeners.emit("retried", "first_statement", "succeeded")
        return result

    def _routing_rerunnable(self, error: DBAPIError) -> bool:
        return (
            self._routing_replica_connection is not None
            and self._routing_writer_connection is None
            and not self._routing_wrote
            and (is_connection_error(error) or is_recovery_conflict(error))
        )

    def _routing_drop_replica(self, error: DBAPIError) -> None:
        # Forget the failed replica connection as if this transaction had never
        # opened it; the next attempt opens another. Session has no public way
        # to detach one connection from its transaction.
        connection = self._routing_replica_connection
        replica = self._routing_replica
        transaction = self._transaction
        assert connection is not None and replica is not None
        forget(transaction, connection)
        self._routing_replica = None
        self._routing_replica_connection = None
        self._routing_excluded = self._routing_excluded | {replica}
        if is_connection_error(error):
            self._routing_router._replica_set.failed(replica, error)  # type: ignore[union-attr]
        close_quietly(connection)

    def rollback(self) -> None:
        """Roll back; a replica connection that died is invalidated, not raised."""
        replica = self._invalidate_dead_replica()
        try:
            super().rollback()
        except DBAPIError as exc:
            # The driver had not noticed the loss yet. Session.rollback() has
            # still ended the transaction and released every connection, so a
            # disconnect on the (read-only) replica is not worth an error.
            if not (exc.connection_invalidated and replica is not None):
                raise
            if not replica.invalidated:
                raise

    def close(self) -> None:
        """Close; a replica connection that died is invalidated, not raised."""
        connection = self._routing_replica_connection
        if connection is not None and self._routing_writer_connection is None:
            # Nothing else to release: end the replica's read first, directly.
            self._routing_replica_connection = None
            try:
                close_quietly(connection)
            finally:
                super().close()
            return
        if connection is not None:
            self._routing_release_replica()
        super().close()

    def reset(self) -> None:
        """Reset; a replica connection that died is invalidated, not raised."""
        if self._routing_replica_connection is not None:
            self._routing_release_replica()
        super().reset()

    def _routing_release_replica(self) -> None:
        # Take the replica's read-only transaction out of the session's hands:
        # it is neither committed nor closed with the others, but ended
        # (rolled back, quietly if the server is gone: close_quietly) once
        # they are, in after_transaction_end. Otherwise one dead replica would
        # raise from COMMIT or close() and keep the writer's connection from
        # being released. Session offers no public switch for this.
        connection = self._routing_replica_connection
        transaction = self._transaction
        if connection is None or transaction is None:
            return
        leave_out_of_commit(transaction, connection)

    def _invalidate_dead_replica(self) -> Connection | None:
        # Without this, ending the transaction sends ROLLBACK on a closed socket
        # and raises; inside close() that error would also stop the writer's
        # connection from being released. Invalidated, it is skipped (its
        # read-only transaction ended on the server when the connection died).
        connection = self._routing_replica_connection
        if connection is None or connection.closed or connection.invalidated:
            return connection
        if driver_says_closed(connection.connection.driver_connection):
            connection.invalidate()
        return connection
