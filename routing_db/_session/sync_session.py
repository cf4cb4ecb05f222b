"""``RoutingSyncSession``: the glue between routing_db and SQLAlchemy's sessions.

Routing happens in the sync ``Session.get_bind`` (SQLAlchemy's documented
override point for asyncio sessions too); ``RoutingSession`` only installs the
sync class. Per-transaction state (the chosen replica, "this transaction
wrote") is one ``RoutedTransaction`` on the sync session, dropped when the
root transaction ends; the connections themselves are looked up in the
session's transaction, never copied. ``get_bind`` only reads context state;
the one write is the causal token, recorded after a COMMIT that wrote.

What the session does when connections fail or die is here too: the first
statement of a transaction that could not get a connection, or lost its
replica before returning anything, runs again elsewhere; a replica's
read-only transaction never makes COMMIT, rollback or close fail; a writer
that is not the primary any more is waited for. Private session internals
touched here are wrapped in ``_compat``.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from sqlalchemy.orm import Session

from .._backends.connections import checkout_failed
from .._backends.positions import takes_writes_now
from .._compat import pause
from .._engines.setup import WriterIsAStandby
from .._exceptions import NoWriterAvailable
from .._retry import is_read_only_rejection

if TYPE_CHECKING:
    from .._router.base import RouterBase
    from .._router.sync_router import SyncRouter
import enum
import functools
import weakref
from collections.abc import Callable
from typing import TypeVar

from sqlalchemy import event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import SessionTransaction
from sqlalchemy.sql.base import Executable
from sqlalchemy.sql.elements import ClauseElement

from .._backends.backend import clusters_of
from .._backends.connections import close_quietly, drop_if_dead
from .._backends.positions import (
    writer_position_now,
)
from .._bounds.connect import ReplicaEjected
from .._causal.floor import FLOOR, CausalFloor
from .._causal.store import CAUSAL_KEY, UNKNOWN, combined
from .._compat import (
    detach,
    held,
    idle,
    innermost_transaction,
    rewind_close,
)
from .._decide.classify import Kind, classify, write_function_named
from .._decide.context import COMMITTING, SCOPE, Scope, committing
from .._decide.decision import DefaultRole, Route, check_default_role, decide_why
from .._engines.setup import NotAStandby
from .._exceptions import (
    ConfigurationError,
    NoReplicaAvailable,
    ReadOnlyViolation,
    ReplicaReadTimeout,
)
from .._replicas.replica_set import Pick
from .._retry import (
    is_connection_error,
    is_recovery_conflict,
    is_stale_plan,
    never_sent,
    rerun_kind,
)
from .._topology.topology import Topology

__all__ = ["RoutedTransaction", "RoutingSyncSession", "first_bind"]

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
    # The writer served a read meant for a replica (none could, or none had
    # replayed this context's writes).
    read_on_writer = False
    # Set while this transaction holds a max_writer_fallbacks slot: gives it
    # back once, when the transaction ends or, for a session dropped without
    # close(), when this object is collected.
    fallback: weakref.finalize[Any, Any] | None = None
    excluded: frozenset[Engine] = frozenset()
    # The engine get_bind last chose: if its connection cannot be had, that is
    # the one to skip (and, for a replica, eject) on the next attempt. None
    # means the writer.
    target: Engine | None = None


def first_bind(
    bind: Any, router: RouterBase[Any] | None, default_role: DefaultRole | None
) -> Any:
    """The bind a session of either face starts with: ``bind``, else the
    router's writer."""
    if router is None:
        if default_role is not None:
            raise ConfigurationError("default_role needs a router")
        return bind
    return router.writer if bind is None else bind


def first_statement(method: Callable[..., Any]) -> Any:
    """``method`` of ``Session``, rerun elsewhere when a transaction's first
    statement lost its connection before returning anything."""

    @functools.wraps(method)
    def run(self: RoutingSyncSession, *args: Any, **kw: Any) -> Any:
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


_ROLE_OPTION = "routing_db_role"
_ROLE_OPTIONS = (None, "writer", "replica")
# Enum members as module names (see _decide.decision): get_bind runs per statement.
_TO_WRITER, _REFUSE, _WRITE = Route.WRITER, Route.REFUSE, Kind.WRITE


def _describe(clause: ClauseElement | None, flushing: bool) -> str:
    if flushing:
        return "flush"
    if clause is None:
        return "connection request"
    function = write_function_named(clause)
    if function is not None:
        # Locks and session state live on the server that runs the call.
        return f"{type(clause).__name__} statement calling {function}()"
    return f"{type(clause).__name__} statement"


class RoutingSyncSession(Session):
    """A ``Session`` that routes each statement in ``get_bind``: the sessions of
    ``routing_sync_sessionmaker``, and the sync session behind ``RoutingSession``."""

    # Set by _routing_route_with() on the sessions it routes, and only where they
    # differ from these defaults: each instance attribute costs every request.
    _routing_auto = False  # default_role "auto": reads go to replicas
    # Without binds=, Session.get_bind resolves to self.bind: skip the call.
    _routing_one_bind = True
    _routing_flushing = False  # inside flush(): every statement writes
    # Set on the sessions a router routes (the base of every routing session).
    _routing_router: RouterBase[Any] | None = None
    # This root transaction's routing state (None until something is worth
    # remembering; dropped in after_transaction_end).
    _routing_tx: RoutedTransaction | None = None

    def _routing_writer_refused(self, error: BaseException) -> bool:
        """Did the writer refuse a write because it is not the primary any more?"""
        router = self._routing_router
        tx = self._routing_tx
        if router is None or (tx is not None and tx.target is not None):
            return False  # not the writer's error
        if not is_read_only_rejection(error):
            return False
        topology = router.topology
        discovery = topology.discovery
        if discovery is not None:
            # Ask every node now; the same primary, still taking writes,
            # means a read-only transaction of the application's own.
            primary = discovery.primary
            discovery.check_now()
            return not (topology.writer_ok and discovery.primary is primary)
        if topology.writer_ok:
            try:
                takes = takes_writes_now(topology.writer)
            except WriterIsAStandby:
                takes = False  # a new connection found it a standby
            except Exception:  # unknown: the error stands as it is
                return False
            if takes:
                return False  # a read-only transaction of the application's own
            topology.writer_lost()
            # Its pooled connections go to a server that is not the primary.
            topology.writer.dispose()
        return True

    def _routing_writer_back(self, error: BaseException) -> bool:
        """After a connection to a cluster's writer could not be had: is the
        writer gone (a failover)? Then wait for the next one and say so."""
        router = self._routing_router
        if router is None:
            return False
        if router.topology.discovery is None:
            if not isinstance(error, WriterIsAStandby):
                return False  # a static writer: the retry policy tries it again
            # Its URL reached a standby: wait until it reaches the primary.
            self._routing_wait_for_writer()
            return True
        if not (checkout_failed(error) or isinstance(error, NoWriterAvailable)):
            return False
        router.topology.discovery.check_now()
        if router.topology.writer_ok:
            return False  # still the writer: a busy pool, or a blip
        self._routing_wait_for_writer()
        return True

    def _routing_writer_now(self) -> bool:
        """Ask whether the writer takes writes now (every node, for a cluster)."""
        router = self._routing_router
        assert router is not None
        topology = router.topology
        if topology.discovery is not None:
            topology.discovery.check_now()
        elif takes_writes_now(topology.writer):
            topology.writer_found()
        return topology.writer_ok

    def _routing_wait_for_writer(self) -> None:
        """Return once the writer takes writes; ``NoWriterAvailable`` after
        ``writer_wait_timeout``."""
        router = self._routing_router
        assert router is not None
        topology = router.topology
        deadline = time.monotonic() + router.health.writer_wait_timeout
        while not topology.writer_ok:
            # Asked here too, so that a router without a running monitor
            # finds the primary back.
            try:
                if self._routing_writer_now():
                    return
            except Exception as exc:  # down or restarting: ask again
                logger.debug("writer role unknown: %r", exc)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                timeout = router.health.writer_wait_timeout
                raise self._routing_no_writer(
                    f"no writer within writer_wait_timeout, {timeout:g} s"
                )
            pause(min(0.1, remaining))

    def _routing_no_writer(self, why: str) -> NoWriterAvailable:
        router = self._routing_router
        assert router is not None
        topology = router.topology
        if topology.discovery is not None:
            what = topology.discovery.describe()
        else:
            what = f"{topology.name(router.writer)} is not the primary"
        return NoWriterAvailable(
            f"no writer: {what} ({why}); a failover may be under way"
        )

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
        # and the writer failed to connect, or the writer's new connections
        # kept reaching a standby: a proxy whose checks have not settled
        # during a failover, say). It wrote nothing and returned nothing, so
        # it waits for one, as a write waits for a writer.
        tx = self._routing_tx
        return (
            SCOPE.get()[0] is Scope.READ_ONLY
            and (tx is None or not tx.wrote)
            and (checkout_failed(error) or isinstance(error, WriterIsAStandby))
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
            self._routing_let_go(connection)

    def _routing_end_read_only_writer(self) -> None:
        # Under read_only, a transaction whose reads the writer served in a
        # replica's place ends as a replica's does, before the COMMIT: writes
        # were refused, so it only read, and a connection a failover ended
        # after the read cannot fail the commit of rows already returned.
        # (Pending changes are refused at the flush that follows.)
        tx = self._routing_tx
        if (
            tx is None
            or tx.wrote
            or not tx.read_on_writer
            or SCOPE.get()[0] is not Scope.READ_ONLY
        ):
            return
        connection = self._routing_writer_connection()
        if connection is not None:
            self._routing_let_go(connection)

    def _routing_let_go(self, connection: Connection) -> None:
        """End a transaction that only read on ``connection`` now, before the
        rest; a dead connection is dropped."""
        detach(self, connection)
        # Its ROLLBACK, even inside commit(), is not the COMMIT under way: a
        # connection lost here (the writer's, or the writer-as-reader's, which
        # shares its events) is no CommitOutcomeUnknown.
        token = COMMITTING.set(False)
        try:
            close_quietly(connection)
        finally:
            COMMITTING.reset(token)

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
            # nothing. So for the writer's, where it served reads meant for a
            # replica and nothing was written (a failover ended it after the
            # read returned). It is dropped and the close finishes the rest.
            if not self._routing_drop_dead_reader(transaction, tx):
                raise
            rewind_close(self, transaction)
            super().close()
        finally:
            if tx.fallback is not None:
                tx.fallback()

    def _routing_drop_dead_reader(
        self, transaction: SessionTransaction | None, tx: RoutedTransaction
    ) -> bool:
        if tx.replica is not None and drop_if_dead(transaction, tx.replica):
            return True
        router = self._routing_router
        if router is None or tx.wrote or not tx.read_on_writer:
            return False
        return drop_if_dead(transaction, router.topology.writer)

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

    def __init__(
        self,
        bind: Any = None,
        *,
        router: SyncRouter | None = None,
        default_role: DefaultRole | None = None,
        **kw: Any,
    ) -> None:
        # Without a router (RoutingSession makes its sync session so) this is
        # a Session in every respect.
        super().__init__(first_bind(bind, router, default_role), **kw)
        if router is not None:
            self._routing_route_with(router, default_role, binds=bool(kw.get("binds")))
            self._routing_sync_face = True

    def _routing_route_with(
        self,
        router: RouterBase[Any],
        default_role: DefaultRole | None,
        *,
        binds: bool,
    ) -> None:
        """Route with ``router`` (either face's session)."""
        if router.topology.closed:
            # Its engines no longer have the hooks that make replica connections
            # read-only: routing with it could write where it must not.
            raise ConfigurationError(
                "this router was disposed: start it again (router.start(), or a "
                "with/async with block) before making sessions"
            )
        if default_role is not None and default_role not in ("writer", "auto"):
            check_default_role(default_role)
        self._routing_router = router
        if (default_role or router.default_role) == "auto":
            self._routing_auto = True
        if binds:
            self._routing_one_bind = False

    # A session of routing_sync_sessionmaker (RoutingSession's sync session is
    # driven through AsyncSessionTransaction, which ends the replica itself).
    _routing_sync_face = False

    def begin(self, nested: bool = False) -> SessionTransaction:
        """As ``Session.begin``; a dead replica never masks the block's error."""
        transaction = super().begin(nested=nested)
        if not self._routing_sync_face:
            return transaction
        return ReplicaFirst(self, transaction)  # type: ignore[return-value]

    def begin_nested(self) -> SessionTransaction:
        """As ``Session.begin_nested``, with ``begin()``'s replica handling."""
        return self.begin(nested=True)

    def get_bind(
        self,
        mapper: Any = None,
        *,
        clause: ClauseElement | None = None,
        bind: Any = None,
        **kw: Any,
    ) -> Engine | Connection:
        """Resolve the bind as ``Session`` does, then route writer-bound work."""
        router = self._routing_router
        if router is None:
            return super().get_bind(mapper, clause=clause, bind=bind, **kw)
        topology = router.topology
        writer = topology.writer
        if not (bind is None and self._routing_one_bind and self.bind is writer):
            # An explicit bind, and binds= entries for other databases, are
            # honoured as they are: only work that would run on the router's
            # writer is routed.
            resolved = super().get_bind(mapper, clause=clause, bind=bind, **kw)
            if bind is not None or resolved is not writer:
                return resolved
        option = (
            clause.get_execution_options().get(_ROLE_OPTION)
            if isinstance(clause, Executable)
            else None
        )
        return self._routing_route(topology, writer, clause, option, SCOPE.get()[0])

    def _routing_route(
        self,
        topology: Topology,
        writer: Engine,
        clause: ClauseElement | None,
        option: Any,
        scope: Scope,
    ) -> Engine:
        if option not in _ROLE_OPTIONS:
            raise ConfigurationError(
                f"execution option {_ROLE_OPTION} must be 'writer' or 'replica', "
                f"got {option!r}"
            )
        kind = classify(clause, flushing=self._routing_flushing)
        tx = self._routing_tx
        route, reason = decide_why(
            kind,
            scope=scope,
            option=option,
            default_role="auto" if self._routing_auto else "writer",
            wrote=tx is not None and tx.wrote,
        )
        if route is _TO_WRITER:
            if not topology.writer_ok:
                self._routing_wait_for_writer()  # a failover is under way
            if kind is _WRITE:
                self._routing_state().wrote = True
            if tx is not None:
                tx.target = None
            if self._routing_flushing and self._routing_writer_connection() is None:
                # commit() flushes outside execute(): open (and retry) here.
                self._routing_open(writer)
            if topology.listeners:
                topology.listeners.emit(
                    "routed", topology.name(writer), "writer", reason
                )
            return writer
        if route is _REFUSE:
            raise ReadOnlyViolation(
                f"{_describe(clause, self._routing_flushing)} is a write inside "
                f"read_only; nothing was sent {_WRITE_HINT}"
            )
        engine = self._routing_replica_for(topology, writer, tx)
        if topology.listeners:
            if engine is writer:
                tx = self._routing_tx
                reason = (
                    "fallback"
                    if tx is not None and tx.fallback is not None
                    else "causal"
                )
            topology.listeners.emit(
                "routed",
                topology.name(engine),
                "writer" if topology.is_writer(engine) else "replica",
                reason,
            )
        return engine

    def _routing_replica_for(
        self, topology: Topology, writer: Engine, tx: RoutedTransaction | None
    ) -> Engine:
        # One replica per transaction: chosen by its first read and kept.
        if tx is not None and tx.replica is not None:
            tx.target = tx.replica
            return tx.replica
        replicas = topology.replica_set
        quick = replicas.quick
        if (
            quick is not None
            and (tx is None or not tx.excluded)
            and (FLOOR.get() is None)
            and (topology.shared is None or CAUSAL_KEY.get() is None)
        ):
            engine = quick()  # every replica well, nothing to read back
        else:
            engine = self._routing_choose_replica(topology, writer)
            if engine is writer:
                state = self._routing_state()
                state.target = None
                state.read_on_writer = True
                return writer
        tx = self._routing_tx
        if tx is None:
            tx = self._routing_tx = RoutedTransaction()
        tx.replica = tx.target = engine
        return engine

    def _routing_choose_replica(self, topology: Topology, writer: Engine) -> Engine:
        # A replica for a read that may have something to read back: chosen,
        # then its connection opened and judged by the server it reached.
        replicas = topology.replica_set
        floor = FLOOR.get()
        if (
            floor is not None
            and floor.unsure is not None
            and not self._routing_sure(topology, floor)
        ):
            return writer
        key = CAUSAL_KEY.get() or ""
        shared = topology.shared if key else None
        if shared is not None and replicas.clusters:
            # What this key wrote in any process (the store's I/O, once per
            # read transaction); a store that cannot say sends it home.
            floor = combined(floor, shared.floor(key, replicas.clusters))
            shared = None
            if floor is UNKNOWN:
                return writer
        behind = False
        while True:
            tx = self._routing_tx
            excluded = frozenset() if tx is None else tx.excluded
            pick, engine = replicas.pick(floor, excluded)
            if engine is None:
                if pick is Pick.CAUSAL or behind:
                    return writer  # read-your-writes: none has replayed them yet
                return self._routing_fall_back(topology, writer)
            judged = floor is not None or shared is not None
            if engine is writer or not (judged or replicas.states[engine].suspect):
                return engine
            # Opened now: a replica that failed lately is re-admitted only once
            # that works (a failure here reruns the statement elsewhere: see
            # _recovery), and the read is judged by the server it reached.
            state = self._routing_state()
            state.replica = state.target = engine
            connection = Session.connection(self, bind_arguments={"bind": engine})
            replicas.succeeded(engine)
            if shared is not None:
                # The store keeps positions per cluster: this connection's
                # cluster is the first one known.
                floor = combined(floor, shared.floor(key, clusters_of(connection.info)))
                shared = None
                if floor is UNKNOWN:
                    self._routing_end_replica()
                    return writer
            if floor is None or replicas.serves(connection, floor):
                return engine
            # Its server has not replayed this context's writes: the read goes
            # to another replica, or the writer. The connection goes back to
            # the pool unused.
            self._routing_end_replica()
            state.excluded = state.excluded | {engine}
            behind = True

    @staticmethod
    def _routing_sure(topology: Topology, floor: CausalFloor) -> bool:
        # A commit of this context whose position could not be read: its
        # reads stay on the writer until the writer answers with its position
        # now (which covers that commit), not for a fixed time.
        try:
            now = writer_position_now(topology.writer)
        except Exception as exc:  # the writer is gone or restarting: stay on it
            logger.debug("the writer's position is unknown: %r", exc)
            return False
        if now is None:
            return False
        floor.settle(*now)
        return True

    def _routing_fall_back(self, topology: Topology, writer: Engine) -> Engine:
        router = self._routing_router
        assert router is not None
        if not router.fallback_to_writer:
            raise NoReplicaAvailable(
                "no replica is available for a read and fallback_to_writer is off"
            )
        tx = self._routing_state()
        if tx.fallback is None:
            if not topology.acquire_fallback():
                raise NoReplicaAvailable(
                    f"no replica is available and {router.max_writer_fallbacks} "
                    "reads already fall back to the writer (max_writer_fallbacks)"
                )
            tx.fallback = weakref.finalize(tx, topology.release_fallback)
            topology.listeners.emit("fell_back", topology.name(writer))
            logger.info("no replica available, read served by the writer")
        return writer

    # The first statement of a transaction runs again when it lost its
    # connection before returning anything (see _routing_recover).
    execute = first_statement(Session.execute)
    scalar = first_statement(Session.scalar)
    scalars = first_statement(Session.scalars)
    _routing_connection = first_statement(Session.connection)

    def connection(
        self,
        bind_arguments: Any = None,
        execution_options: Any = None,
    ) -> Connection:
        """As ``Session.connection``; a writer connection handed out is sticky."""
        router = self._routing_router
        if router is None:
            return super().connection(bind_arguments, execution_options)
        connection: Connection = self._routing_connection(
            bind_arguments, execution_options
        )
        if connection.engine is router.topology.writer:
            # Whatever runs on a raw writer connection is invisible to routing:
            # assume it wrote, so later reads in this transaction see it.
            self._routing_state().wrote = True
        return connection

    def commit(self) -> None:
        """As ``Session.commit``; a lost COMMIT is ``CommitOutcomeUnknown``."""
        with committing():
            super().commit()

    def flush(self, objects: Any = None) -> None:
        """As ``Session.flush``; routing sends what it writes to the writer."""
        flushing, self._routing_flushing = self._routing_flushing, True
        try:
            super().flush(objects)
        except Exception as exc:
            # A flush is not run again, but the writer's refusal is named for
            # what it is when the writer is not the primary any more.
            if self._routing_writer_refused(exc):
                raise self._routing_no_writer(
                    "it refused a write as read-only"
                ) from exc
            raise
        finally:
            self._routing_flushing = flushing

    def _has_changes(self) -> bool:
        return bool(
            self.new or self.deleted or any(self.is_modified(obj) for obj in self.dirty)
        )


class ReplicaFirst:
    """A ``SessionTransaction`` (sync face) whose rollback ends a replica's read
    first, as ``RoutingSessionTransaction`` does on asyncio."""

    def __init__(self, session: RoutingSyncSession, transaction: Any) -> None:
        self._session = session
        self._inner = transaction

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def rollback(self, _to_root: bool = False) -> None:
        """Roll back; a replica connection that died is dropped, not raised."""
        try:
            self._session._routing_end_replica()
        finally:
            self._inner.rollback(_to_root)

    def __enter__(self) -> ReplicaFirst:
        self._inner.__enter__()
        return self

    def __exit__(self, type_: Any, value: Any, traceback: Any) -> None:
        if type_ is not None:
            try:
                self._session._routing_end_replica()
            finally:
                self._inner.__exit__(type_, value, traceback)
            return
        with committing():  # the block ended well: this commits
            self._inner.__exit__(type_, value, traceback)


# Where the read_only came from is often not in sight: a decorator far up,
# or the middleware's roles_by_method.
_WRITE_HINT = (
    "(use use_writer for work that writes; with roles_by_method=True, "
    "GET, HEAD and OPTIONS requests run under read_only)"
)


@event.listens_for(RoutingSyncSession, "before_flush")
def _before_flush(session: RoutingSyncSession, context: Any, objects: Any) -> None:
    # A flush with pending changes inside read_only is refused here, before
    # flush opens its subtransaction, so the session and its pending objects
    # are left exactly as they were. (Flushes of a clean session never get
    # this far, so reads pay nothing for the check.)
    if (
        session._routing_router is not None
        and SCOPE.get()[0] is Scope.READ_ONLY
        and session._has_changes()
    ):
        raise ReadOnlyViolation(
            "flush inside read_only would write pending changes; nothing was "
            f"sent and the pending changes are kept {_WRITE_HINT}"
        )


@event.listens_for(RoutingSyncSession, "before_commit")
def _before_commit(session: RoutingSyncSession) -> None:
    if not session.in_nested_transaction():
        # A replica that died must not fail, or come before, the writer's COMMIT.
        session._routing_end_replica()
        session._routing_end_read_only_writer()


@event.listens_for(RoutingSyncSession, "after_commit")
def _after_commit(session: RoutingSyncSession) -> None:
    tx = session._routing_tx
    if tx is None or not tx.wrote or session.in_nested_transaction():
        return
    router = session._routing_router
    connection = session._routing_writer_connection()
    if router is None or connection is None:
        return
    router.topology.record_commit(connection.connection)


@event.listens_for(RoutingSyncSession, "after_transaction_end")
def _end_of_transaction(
    session: RoutingSyncSession, transaction: SessionTransaction
) -> None:
    # Listeners on RoutingSyncSession only ever receive its instances.
    if session._routing_tx is not None and transaction.parent is None:
        session._routing_finish()
