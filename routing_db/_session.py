"""``RoutingSyncSession``: the glue between routing_db and SQLAlchemy's sessions.

Routing happens in the sync ``Session.get_bind`` (SQLAlchemy's documented
override point for asyncio sessions too); ``RoutingSession`` only installs the
sync class. Per-transaction state (the chosen replica, "this transaction
wrote") is one ``RoutedTransaction`` on the sync session, dropped when the
root transaction ends; the connections themselves are looked up in the
session's transaction, never copied. ``get_bind`` only reads context state;
the one write is the causal token, recorded after a COMMIT that wrote.
"""

from __future__ import annotations

import logging
import weakref
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import Session, SessionTransaction
from sqlalchemy.sql.base import Executable
from sqlalchemy.sql.elements import ClauseElement

from ._begin import ReplicaFirst
from ._causal import FLOOR, CausalFloor, record_write
from ._classify import Kind, classify, write_function_named
from ._context import SCOPE, Scope, committing
from ._decision import DefaultRole, Route, decide_why
from ._exceptions import ConfigurationError, NoReplicaAvailable, ReadOnlyViolation
from ._positions import (
    clusters_of,
    has_positions,
    writer_position_after_commit,
    writer_position_now,
)
from ._recovery import RecoveringSession, RoutedTransaction, first_statement
from ._replicas import Pick
from ._shared_floor import CAUSAL_KEY, UNKNOWN, combined
from ._topology import Topology

__all__ = ["RoutingSyncSession"]

logger = logging.getLogger("routing_db")

_ROLE_OPTION = "routing_db_role"
_ROLE_OPTIONS = (None, "writer", "replica")
# Enum members as module names (see _decision): get_bind runs per statement.
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


class RoutingSyncSession(RecoveringSession):
    """A ``Session`` that routes each statement in ``get_bind``: the sessions of
    ``routing_sync_sessionmaker``, and the sync session behind ``RoutingSession``."""

    # Set by route_with() on the sessions it routes, and only where they
    # differ from these defaults: each instance attribute costs every request.
    _routing_auto = False  # default_role "auto": reads go to replicas
    # Without binds=, Session.get_bind resolves to self.bind: skip the call.
    _routing_one_bind = True
    _routing_flushing = False  # inside flush(): every statement writes

    def __init__(
        self,
        bind: Any = None,
        *,
        router: Any = None,  # a SyncRouter (typed loosely: see test_architecture)
        default_role: DefaultRole | None = None,
        **kw: Any,
    ) -> None:
        # Without a router (RoutingSession makes its sync session so) this is
        # a Session in every respect.
        if router is None:
            if default_role is not None:
                raise ConfigurationError("default_role needs a router")
            super().__init__(bind, **kw)
            return
        super().__init__(router.writer if bind is None else bind, **kw)
        # Imported here: the session knows no router module at import time.
        from ._sync_session import route_with

        route_with(self, router, default_role, binds=bool(kw.get("binds")))
        self._routing_sync_face = True

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
                "read_only; nothing was sent (use use_writer for work that writes)"
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
                tx = self._routing_tx
                if tx is not None:
                    tx.target = None
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
            logger.debug("routing_db: the writer's position is unknown: %r", exc)
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
            logger.info("routing_db: no replica available, read served by the writer")
        return writer

    # The first statement of a transaction runs again when it lost its
    # connection before returning anything (see _recovery).
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
            "sent and the pending changes are kept"
        )


@event.listens_for(RoutingSyncSession, "before_commit")
def _before_commit(session: RoutingSyncSession) -> None:
    if not session.in_nested_transaction():
        # A replica that died must not fail, or come before, the writer's COMMIT.
        session._routing_end_replica()


@event.listens_for(RoutingSyncSession, "after_commit")
def _after_commit(session: RoutingSyncSession) -> None:
    tx = session._routing_tx
    if tx is None or not tx.wrote or session.in_nested_transaction():
        return
    router = session._routing_router
    connection = session._routing_writer_connection()
    if router is None or not router.replicas or connection is None:
        return
    try:
        position = writer_position_after_commit(connection)
    except Exception as exc:
        # The commit succeeded; without its position, the time window
        # (sticky_seconds) keeps this context's reads on the writer.
        logger.debug("routing_db: no replication position after commit: %r", exc)
        position = None
    if position is None:
        # Where positions exist, the context stays on the writer until its
        # position is known again; elsewhere the time window (sticky_seconds).
        record_write(lsn=None, unsure=has_positions(connection.dialect.name))
        cluster = None
    else:
        lsn, server, cluster = position
        record_write(lsn=lsn, server=server, cluster=cluster)
    key = CAUSAL_KEY.get()
    floor = FLOOR.get()
    if router.topology.shared is not None and key is not None and floor is not None:
        router.topology.shared.wrote(key, floor, cluster)


@event.listens_for(RoutingSyncSession, "after_transaction_end")
def _end_of_transaction(
    session: RoutingSyncSession, transaction: SessionTransaction
) -> None:
    # Listeners on RoutingSyncSession only ever receive its instances.
    if session._routing_tx is not None and transaction.parent is None:
        session._routing_finish()
