"""What a routing session does when connections fail or die.

The first statement of a transaction that could not get a connection, or lost
its replica before returning anything, runs again elsewhere; a replica's
read-only transaction never makes COMMIT, rollback or close fail. Private
session internals touched here are wrapped in ``_connections``.
"""

from __future__ import annotations

import functools
import logging
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from ._connections import (
    checkout_failed,
    close_quietly,
    drop_if_dead,
    forget,
    held,
    idle,
    marked_for_rerun,
    rewind_close,
)
from ._retry import is_connection_error, is_recovery_conflict, never_sent

if TYPE_CHECKING:
    from ._router import Router

__all__ = ["RecoveringSession", "RoutedTransaction", "first_statement"]

logger = logging.getLogger("routing_db")
T = TypeVar("T")


def _now(error: BaseException) -> bool:
    return bool(getattr(error, "_routing_db_now", False))


class RoutedTransaction:
    """What routing remembers about one root transaction of a session.

    Created by the first statement that needs to remember something (most
    writer-bound statements do not), dropped when the root transaction ends.
    Class attributes are the defaults, so a new one costs no ``__init__``.
    """

    # The replica (or the writer as a reader) this transaction reads from.
    replica: Engine | None = None
    wrote = False
    # Set while this transaction holds a max_writer_fallbacks slot: gives it
    # back once, when the transaction ends or, for a session dropped without
    # close(), when this object is collected.
    fallback: weakref.finalize[Any, Any] | None = None
    excluded: frozenset[Engine] = frozenset()
    # The engine get_bind last chose: if its connection cannot be had, that is
    # the one to skip (and, for a replica, eject) on the next attempt. None
    # means the writer.
    target: Engine | None = None


def first_statement(method: Callable[..., Any]) -> Any:
    """``method`` of ``Session``, rerun elsewhere when a transaction's first
    statement lost its connection before returning anything."""

    @functools.wraps(method)
    def run(self: RecoveringSession, *args: Any, **kw: Any) -> Any:
        # One frame on the hot path. "Fresh" (no connection in this root
        # transaction yet) is read before the call, since the failed call
        # itself may have begun a connection.
        transaction = self._transaction
        fresh = transaction is None or idle(transaction)
        try:
            return method(self, *args, **kw)
        except Exception as exc:
            if not (fresh and self._routing_recover(exc)):
                self._routing_unpin()
                raise
        return self._routing_again(functools.partial(method, self), *args, **kw)

    return run


class RecoveringSession(Session):
    """A ``Session`` whose first statements survive lost connections."""

    _routing_router: Router | None = None
    # This root transaction's routing state (None until something is worth
    # remembering; dropped in after_transaction_end).
    _routing_tx: RoutedTransaction | None = None

    def _routing_state(self) -> RoutedTransaction:
        tx = self._routing_tx
        if tx is None:
            tx = self._routing_tx = RoutedTransaction()
        return tx

    def _routing_held(self, engine: Engine | None) -> Connection | None:
        """The connection this root transaction holds for ``engine``, if any."""
        if engine is None:
            return None
        return held(self._transaction, engine)

    def _routing_writer_connection(self) -> Connection | None:
        router = self._routing_router
        return None if router is None else self._routing_held(router._sync_writer)

    def _routing_unpin(self) -> None:
        # A replica chosen by get_bind whose connection could not be had is
        # not this transaction's replica: the next read chooses again.
        tx = self._routing_tx
        if (
            tx is not None
            and tx.replica is not None
            and self._routing_held(tx.replica) is None
        ):
            tx.replica = None

    def _routing_open(self, engine: Engine) -> None:
        # Nothing has been sent on this connection yet, so a failure to get
        # one is always safe to retry (after a restart, say).
        router = self._routing_router
        assert router is not None
        router.retry.call(
            lambda: self._connection_for_bind(engine, None), retry_if=checkout_failed
        )

    def _routing_recover(self, error: BaseException) -> bool:
        """After this transaction's first statement failed: may it run again?"""
        router = self._routing_router
        if router is None:
            return False
        if not self.is_active:
            return False  # a failed flush: the session must be rolled back first
        transaction = self._transaction
        if transaction is None or idle(transaction):
            # No connection could be had, so nothing was sent: run it again,
            # on another replica if it was one (not waiting), else the writer.
            if not checkout_failed(error):
                return False
            # A full pool is busy, not broken: skip it, don't eject it.
            self._routing_skip_target(
                error, eject=not isinstance(error, sa_exc.TimeoutError)
            )
            return True
        # The first statement failed on its replica because the connection was
        # lost or the standby cancelled it for a recovery conflict: no result
        # was returned and nothing was written, so it can run elsewhere.
        if isinstance(error, DBAPIError) and self._routing_rerunnable(error):
            self._routing_drop_replica(error)
            error._routing_db_now = True  # type: ignore[attr-defined]
            return True
        # The driver refused it before sending anything (its connection died
        # idle in the pool, unnoticed until now): on the writer too, nothing
        # of it reached the server, so it runs again on a new connection,
        # after the policy's backoff (the server may be restarting).
        return never_sent(error) and self._routing_drop_unsent(error)

    def _routing_drop_unsent(self, error: BaseException) -> bool:
        router = self._routing_router
        assert router is not None
        tx = self._routing_tx
        target = None if tx is None else tx.target
        engine = router._sync_writer if target is None else target
        connection = self._routing_held(engine)
        if connection is None:
            return False
        self._routing_forget(connection)
        if not connection.invalidated:
            connection.invalidate(error if isinstance(error, Exception) else None)
        close_quietly(connection)
        self._routing_skip_target(error, eject=True)
        return True

    def _routing_skip_target(self, error: BaseException, *, eject: bool) -> None:
        # If the statement was bound for a replica, the next attempt goes to
        # another one at once (no backoff); the writer is simply tried again.
        router = self._routing_router
        tx = self._routing_tx
        target = None if tx is None else tx.target
        if router is None or tx is None or target not in router._replica_set:
            return
        assert target is not None
        if eject:
            router._replica_set.failed(target, error)
        tx.excluded = tx.excluded | {target}
        if tx.replica is target:
            tx.replica = None
        error._routing_db_now = True  # type: ignore[attr-defined]

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
        tx = self._routing_tx
        return (
            tx is not None
            and not tx.wrote
            and self._routing_held(tx.replica) is not None
            and self._routing_writer_connection() is None
            and (is_connection_error(error) or is_recovery_conflict(error))
        )

    def _routing_drop_replica(self, error: DBAPIError) -> None:
        # Forget the failed replica connection as if this transaction had never
        # opened it; the next attempt opens another. Session has no public way
        # to detach one connection from its transaction.
        tx = self._routing_state()
        replica = tx.replica
        connection = self._routing_held(replica)
        assert connection is not None and replica is not None
        self._routing_forget(connection)
        tx.replica = None
        tx.excluded = tx.excluded | {replica}
        if is_connection_error(error):
            self._routing_router._replica_set.failed(replica, error)  # type: ignore[union-attr]
        close_quietly(connection)

    def _routing_forget(self, connection: Connection) -> None:
        transaction = self._transaction
        while transaction is not None:
            forget(transaction, connection)
            transaction = transaction._parent

    def _routing_end_replica(self) -> None:
        # End the replica's read-only transaction now, before the rest: a
        # replica that died must not fail COMMIT, rollback or close(), nor keep
        # the writer's connection from being released. Its transaction only
        # read, so ending it early loses nothing. Session offers no public
        # way to let go of one of its connections; COMMIT and rollback need
        # it detached; close() does without (see close()).
        tx = self._routing_tx
        if tx is None or tx.replica is None:
            return
        connection = held(self._transaction, tx.replica)
        tx.replica = None
        if connection is not None:
            self._routing_forget(connection)
            close_quietly(connection)

    def rollback(self) -> None:
        """Roll back; a replica connection that died is dropped, not raised."""
        try:
            self._routing_end_replica()
        finally:
            super().rollback()

    def close(self) -> None:
        """Close; a replica connection that died is dropped, not raised."""
        tx = self._routing_tx
        if tx is None:
            super().close()
            return
        # The state is dropped here rather than in after_transaction_end: a
        # session closed before its transaction began gets no such event.
        self._routing_tx = None
        transaction = self._transaction
        try:
            super().close()
        except Exception:
            # Looked at only once closing failed, so a close pays nothing for
            # it. Closing stopped at a connection; if the replica's is dead,
            # that was it: its transaction only read, so ending it loses
            # nothing. It is dropped and the close finishes the rest.
            if tx.replica is None or not drop_if_dead(transaction, tx.replica):
                raise
            rewind_close(self, transaction)
            super().close()
        finally:
            if tx.fallback is not None:
                tx.fallback()

    def _routing_finish(self) -> None:
        """Forget the root transaction that ended, and give back what it held."""
        tx = self._routing_tx
        self._routing_tx = None
        if tx is not None and tx.fallback is not None:
            tx.fallback()

    def reset(self) -> None:
        """Reset; a replica connection that died is dropped, not raised."""
        try:
            self._routing_end_replica()
        finally:
            super().reset()
