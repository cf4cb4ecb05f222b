"""What a routing session does when connections fail or die.

The first statement of a transaction that could not get a connection, or lost
its replica before returning anything, runs again elsewhere; a replica's
read-only transaction never makes COMMIT, rollback or close fail. Private
session internals touched here are wrapped in ``_sa_compat``.
"""

from __future__ import annotations

import enum
import functools
import logging
import time
import weakref
from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from ._bounds import ReplicaEjected
from ._connections import checkout_failed, close_quietly, drop_if_dead
from ._context import SCOPE, Scope
from ._engines import NotAStandby
from ._exceptions import ReplicaReadTimeout
from ._retry import (
    is_connection_error,
    is_recovery_conflict,
    is_stale_plan,
    never_sent,
    rerun_kind,
)
from ._sa_compat import (
    detach,
    held,
    idle,
    innermost_transaction,
    pause,
    rewind_close,
)
from ._writer_wait import WriterWaiting

__all__ = ["RecoveringSession", "RoutedTransaction", "first_statement"]

logger = logging.getLogger("routing_db")
T = TypeVar("T")


class Rerun(enum.Enum):
    """How a failed first statement may run again."""

    AT_ONCE = "at once"  # elsewhere: another replica, or a fresh connection
    AFTER_BACKOFF = "after backoff"  # the same server, which may be restarting


class _Rerun(Exception):
    """Raised inside the retry loop for a failure that may run again."""

    def __init__(self, error: Exception, how: Rerun) -> None:
        super().__init__(error)
        self.error = error
        self.at_once = how is Rerun.AT_ONCE


def _is_rerun(error: BaseException) -> bool:
    return isinstance(error, _Rerun)


def _at_once(error: BaseException) -> bool:
    return isinstance(error, _Rerun) and error.at_once


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
        fresh = idle(innermost_transaction(self))
        try:
            return method(self, *args, **kw)
        except Exception as exc:
            if fresh:
                how = self._routing_recover(exc)
            elif self._routing_writer_refused(exc):
                raise self._routing_no_writer(
                    "it refused a write as read-only"
                ) from exc
            else:
                how = None
            if how is None:
                self._routing_unpin()
                raise
            kind = rerun_kind(exc)
        again = functools.partial(method, self)
        return self._routing_again(kind, again, *args, **kw)

    return run


class RecoveringSession(WriterWaiting):
    """A ``Session`` whose first statements survive lost connections."""

    def _routing_state(self) -> RoutedTransaction:
        tx = self._routing_tx
        if tx is None:
            tx = self._routing_tx = RoutedTransaction()
        return tx

    def _routing_held(self, engine: Engine | None) -> Connection | None:
        """The connection this root transaction holds for ``engine``, if any."""
        if engine is None:
            return None
        return held(innermost_transaction(self), engine)

    def _routing_writer_connection(self) -> Connection | None:
        router = self._routing_router
        return None if router is None else self._routing_held(router.topology.writer)

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

        def open_() -> None:
            deadline = time.monotonic() + router.health.writer_wait_timeout
            while True:
                try:
                    Session.connection(self, bind_arguments={"bind": engine})
                    return
                except Exception as exc:
                    # The writer was gone (or its URL reached a standby): the
                    # next primary takes writes now, open on it.
                    if time.monotonic() > deadline or not self._routing_writer_back(
                        exc
                    ):
                        raise

        router.retry.call(open_, retry_if=checkout_failed)

    def _routing_recover(self, error: BaseException) -> Rerun | None:
        """After this transaction's first statement failed: may it run again?"""
        router = self._routing_router
        if router is None:
            return None
        if not self.is_active:
            return None  # a failed flush: the session must be rolled back first
        if idle(innermost_transaction(self)):
            # No connection could be had, so nothing was sent: run it again,
            # on another replica if it was one (not waiting), else the writer.
            if isinstance(error, NotAStandby) and error.promoted:
                # Its new connection found it promoted (the monitor has not
                # polled it since): it left the read set; not a failure.
                return self._routing_skip_target(error, eject=False)
            if isinstance(error, ReplicaEjected):
                # Ejected while this read waited for its pool: no failure.
                return self._routing_skip_target(error, eject=False)
            tx = self._routing_tx
            if (tx is None or tx.target is None) and self._routing_writer_back(error):
                # A cluster's writer is gone: nothing was sent, so the
                # statement runs on the next primary, once there is one.
                return Rerun.AT_ONCE
            if is_recovery_conflict(error):
                # The standby cancelled routing_db's own work on opening
                # the connection (its setup, the checkout ping): nothing of
                # the application's was sent; another replica, at once.
                return self._routing_skip_target(error, eject=False)
            if not checkout_failed(error):
                return None
            # A full pool is busy, not broken: skip it, don't eject it.
            return self._routing_skip_target(
                error, eject=not isinstance(error, sa_exc.TimeoutError)
            )
        # The first statement failed on its replica because the connection was
        # lost or the standby cancelled it for a recovery conflict: no result
        # was returned and nothing was written, so it can run elsewhere.
        if isinstance(error, DBAPIError) and self._routing_rerunnable(error):
            self._routing_drop_replica(error)
            return Rerun.AT_ONCE
        # A read_only read the writer served (no replica had caught up, or
        # none was left) lost its connection before returning anything: it
        # wrote nothing (writes are refused in read_only), so it runs again,
        # on a replica if one serves now, after the backoff (the writer may
        # be restarting, or failing over).
        if isinstance(error, DBAPIError) and self._routing_rereadable(error):
            self._routing_drop_connection(error, None)
            return Rerun.AFTER_BACKOFF
        # The writer refused it as read-only, and is found not to be the
        # primary any more (a failover): nothing was written, so it runs
        # again once the writer takes writes, within writer_wait_timeout.
        if self._routing_writer_refused(error):
            self._routing_drop_connection(error, None)
            self._routing_wait_for_writer()
            return Rerun.AT_ONCE
        # The driver refused it before sending anything (its connection died
        # idle in the pool, unnoticed until now): on the writer too, nothing
        # of it reached the server, so it runs again on a new connection,
        # after the policy's backoff (the server may be restarting).
        if never_sent(error):
            return self._routing_drop_unsent(error)
        return None

    def _routing_drop_unsent(self, error: BaseException) -> Rerun | None:
        tx = self._routing_tx
        if not self._routing_drop_connection(error, None if tx is None else tx.target):
            return None
        return self._routing_skip_target(error, eject=True)

    def _routing_drop_connection(
        self, error: BaseException, target: Engine | None
    ) -> bool:
        """Throw away the connection to ``target`` (None: the writer), if held."""
        router = self._routing_router
        assert router is not None
        engine = router.topology.writer if target is None else target
        connection = self._routing_held(engine)
        if connection is None:
            return False
        detach(self, connection)
        if not connection.invalidated:
            connection.invalidate(error if isinstance(error, Exception) else None)
        close_quietly(connection)
        return True

    def _routing_skip_target(self, error: BaseException, *, eject: bool) -> Rerun:
        # If the statement was bound for a replica, the next attempt goes to
        # another one at once (no backoff); the writer is simply tried again.
        router = self._routing_router
        tx = self._routing_tx
        target = None if tx is None else tx.target
        if router is None or tx is None or target is None:
            return Rerun.AFTER_BACKOFF
        replicas = router.topology.replica_set
        if target not in replicas:
            return Rerun.AFTER_BACKOFF
        if eject:
            replicas.failed(target, error)
        tx.excluded = tx.excluded | {target}
        if tx.replica is target:
            tx.replica = None
        return Rerun.AT_ONCE

    def _routing_again(
        self, kind: str, method: Callable[..., T], *args: Any, **kw: Any
    ) -> T:
        router = self._routing_router
        assert router is not None

        def attempt() -> T:
            try:
                return method(*args, **kw)
            except Exception as exc:
                how = self._routing_recover(exc)
                if how is None:
                    raise
                raise _Rerun(exc, how) from exc

        # Skipping a replica does not use up an attempt: every replica may be
        # tried, then the writer as the policy allows.
        topology = router.topology
        retrying = router.retry.again(
            _is_rerun, extra_attempts=len(router.replicas), no_wait_if=_at_once
        )
        try:
            result = retrying(attempt)
        except _Rerun as gave_up:
            error = gave_up.error
        except Exception:
            topology.listeners.emit("retried", kind, "failed")
            raise
        else:
            topology.listeners.emit("retried", kind, "succeeded")
            return result
        if self._routing_may_wait_to_read(error):
            try:
                result = self._routing_read_when_served(attempt, error)
            except Exception:
                topology.listeners.emit("retried", kind, "failed")
                raise
            topology.listeners.emit("retried", kind, "succeeded")
            return result
        topology.listeners.emit("retried", kind, "failed")
        # Raised outside the except block: the user sees the driver's error
        # and its own chain, not our marker.
        raise error

    def _routing_may_wait_to_read(self, error: BaseException) -> bool:
        # A read_only read that found no server to read from (every replica
        # and the writer failed to connect: a proxy with no server up behind
        # it during a failover, say). It wrote nothing and returned nothing,
        # so it waits for one, as a write waits for a writer.
        tx = self._routing_tx
        return (
            SCOPE.get()[0] is Scope.READ_ONLY
            and (tx is None or not tx.wrote)
            and checkout_failed(error)
            and not isinstance(error, sa_exc.TimeoutError)  # busy, not down
        )

    def _routing_read_when_served(
        self, attempt: Callable[[], T], error: Exception
    ) -> T:
        """Run ``attempt`` again with a growing pause until it is served, up to
        ``writer_wait_timeout``; then raise the last error."""
        router = self._routing_router
        assert router is not None
        deadline = time.monotonic() + router.health.writer_wait_timeout
        delay = 0.05
        while (remaining := deadline - time.monotonic()) > 0:
            pause(min(delay, remaining))
            delay = min(delay * 2, 0.5)
            tx = self._routing_tx
            if tx is not None:
                tx.excluded = frozenset()  # each server may be back by now
            try:
                return attempt()
            except _Rerun as again:
                error = again.error
                if not self._routing_may_wait_to_read(error):
                    break
        raise error

    def _routing_rerunnable(self, error: DBAPIError) -> bool:
        tx = self._routing_tx
        return (
            tx is not None
            and not tx.wrote
            and self._routing_held(tx.replica) is not None
            and self._routing_writer_connection() is None
            and (
                is_connection_error(error)
                or is_recovery_conflict(error)
                or is_stale_plan(error)
            )
        )

    def _routing_rereadable(self, error: DBAPIError) -> bool:
        tx = self._routing_tx
        return (
            SCOPE.get()[0] is Scope.READ_ONLY
            and (tx is None or (not tx.wrote and tx.replica is None))
            and self._routing_writer_connection() is not None
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
        detach(self, connection)
        tx.replica = None
        if not is_stale_plan(error):
            # A stale plan is dropped from the caches by its failure: the
            # same replica runs it again.
            tx.excluded = tx.excluded | {replica}
        router = self._routing_router
        # A read timeout counted as a failure where it was raised.
        if (
            router is not None
            and is_connection_error(error)
            and not isinstance(error, ReplicaReadTimeout)
        ):
            router.topology.replica_set.failed(replica, error)
        close_quietly(connection)

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
        connection = self._routing_held(tx.replica)
        tx.replica = None
        if connection is not None:
            detach(self, connection)
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
        transaction = innermost_transaction(self)
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
