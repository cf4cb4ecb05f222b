"""``RoutingSession``: the only glue between routing_db and SQLAlchemy's sessions.

Routing happens in the sync ``Session.get_bind`` (SQLAlchemy's documented
override point for asyncio sessions too); ``RoutingSession`` only installs the
sync class. Per-transaction state (the chosen replica, "this transaction
wrote") lives on the sync session and is cleared when the root transaction
ends; context state is only ever read here, never written.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session, SessionTransaction
from sqlalchemy.sql.elements import ClauseElement
from sqlalchemy.util import EMPTY_DICT

from ._classify import Kind, classify
from ._context import Scope, current_scope
from ._decision import DefaultRole, Route, check_default_role, decide
from ._exceptions import ConfigurationError, NoReplicaAvailable, ReadOnlyViolation
from ._router import Router

__all__ = ["RoutingSession", "RoutingSyncSession", "routing_sessionmaker"]

_ROLE_OPTION = "routing_db_role"
_ROLE_OPTIONS = (None, "writer", "replica")


def _describe(clause: ClauseElement | None, flushing: bool) -> str:
    if flushing:
        return "flush"
    if clause is None:
        return "connection request"
    return f"{type(clause).__name__} statement"


def _driver_says_closed(driver_connection: Any) -> bool:
    """What the driver already knows about its socket, without any I/O."""
    is_closed = getattr(driver_connection, "is_closed", None)  # asyncpg
    if callable(is_closed):
        return bool(is_closed())
    for flag in ("broken", "closed"):  # psycopg 3, aiomysql/asyncmy
        value = getattr(driver_connection, flag, None)
        if isinstance(value, bool) and value:
            return True
    return False


class RoutingSyncSession(Session):
    """The sync ``Session`` behind ``RoutingSession``; routes in ``get_bind``."""

    def __init__(
        self,
        bind: Any = None,
        *,
        router: Router | None = None,
        default_role: DefaultRole | None = None,
        **kw: Any,
    ) -> None:
        super().__init__(bind=bind, **kw)
        if default_role is not None:
            check_default_role(default_role)
        self._routing_router = router
        self._routing_default: DefaultRole = default_role or (
            router.default_role if router is not None else "writer"
        )
        self._routing_replica: Engine | None = None
        self._routing_replica_connection: Connection | None = None
        self._routing_wrote = False

    def get_bind(
        self,
        mapper: Any = None,
        *,
        clause: ClauseElement | None = None,
        bind: Any = None,
        **kw: Any,
    ) -> Engine | Connection:
        """Resolve the bind as ``Session`` does, then route writer-bound work."""
        resolved = super().get_bind(mapper, clause=clause, bind=bind, **kw)
        router = self._routing_router
        # An explicit bind, and binds= entries for other databases, are honoured
        # as they are: only work that would run on the router's writer is routed.
        if router is None or bind is not None or resolved is not router._sync_writer:
            return resolved
        option = getattr(clause, "_execution_options", EMPTY_DICT).get(_ROLE_OPTION)
        if option not in _ROLE_OPTIONS:
            raise ConfigurationError(
                f"execution option {_ROLE_OPTION} must be 'writer' or 'replica', "
                f"got {option!r}"
            )
        kind = classify(clause, flushing=self._flushing)
        route = decide(
            kind,
            scope=current_scope(),
            option=option,
            default_role=self._routing_default,
            wrote=self._routing_wrote,
        )
        if route is Route.WRITER:
            if kind is Kind.WRITE:
                self._routing_wrote = True
            return resolved
        if route is Route.REFUSE:
            raise ReadOnlyViolation(
                f"{_describe(clause, self._flushing)} is a write inside read_only; "
                "nothing was sent (use use_writer for work that writes)"
            )
        # One replica per transaction: the one whose connection this
        # transaction already holds (pinned in after_begin, so a replica whose
        # connect failed is not pinned), else a fresh choice.
        replica = self._routing_replica or router._choose_replica()
        if replica is None:
            if router.fallback_to_writer:
                return resolved
            raise NoReplicaAvailable(
                "no replica is available for a read and fallback_to_writer is off"
            )
        return replica

    def flush(self, objects: Sequence[Any] | None = None) -> None:
        """Flush; inside ``read_only`` pending changes raise before anything is sent."""
        if (
            self._routing_router is not None
            and current_scope() is Scope.READ_ONLY
            and not self._flushing
            and self._has_changes()
        ):
            # Refused here, before flush opens its subtransaction, so the
            # session and its pending objects are left exactly as they were.
            raise ReadOnlyViolation(
                "flush inside read_only would write pending changes; nothing was "
                "sent and the pending changes are kept"
            )
        super().flush(objects)

    def connection(
        self,
        bind_arguments: Any = None,
        execution_options: Any = None,
    ) -> Connection:
        """As ``Session.connection``; a writer connection handed out is sticky."""
        connection = super().connection(bind_arguments, execution_options)
        router = self._routing_router
        if router is not None and connection.engine is router._sync_writer:
            # Whatever runs on a raw writer connection is invisible to routing:
            # assume it wrote, so later reads in this transaction see it.
            self._routing_wrote = True
        return connection

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
        self._invalidate_dead_replica()
        super().close()

    def reset(self) -> None:
        """Reset; a replica connection that died is invalidated, not raised."""
        self._invalidate_dead_replica()
        super().reset()

    def _invalidate_dead_replica(self) -> Connection | None:
        # Without this, ending the transaction sends ROLLBACK on a closed socket
        # and raises; inside close() that error would also stop the writer's
        # connection from being released. Invalidated, it is skipped (its
        # read-only transaction ended on the server when the connection died).
        connection = self._routing_replica_connection
        if connection is None or connection.closed or connection.invalidated:
            return connection
        if _driver_says_closed(connection.connection.driver_connection):
            connection.invalidate()
        return connection

    def _has_changes(self) -> bool:
        if self._is_clean():
            return False
        return bool(
            self.new or self.deleted or any(self.is_modified(obj) for obj in self.dirty)
        )


@event.listens_for(RoutingSyncSession, "after_begin")
def _connection_begun(
    session: Session, transaction: SessionTransaction, connection: Connection
) -> None:
    if not isinstance(session, RoutingSyncSession):
        return
    router = session._routing_router
    if router is not None and connection.engine in router._sync_replicas:
        session._routing_replica = connection.engine
        session._routing_replica_connection = connection


@event.listens_for(RoutingSyncSession, "after_transaction_end")
def _end_of_transaction(session: Session, transaction: SessionTransaction) -> None:
    if transaction.parent is None and isinstance(session, RoutingSyncSession):
        session._routing_replica = None
        session._routing_replica_connection = None
        session._routing_wrote = False


class RoutingSession(AsyncSession):
    """An ``AsyncSession`` that sends each statement to the writer or a replica."""

    sync_session_class: type[Session] = RoutingSyncSession

    def __init__(
        self,
        bind: Any = None,
        *,
        router: Router | None = None,
        default_role: DefaultRole | None = None,
        binds: Any = None,
        sync_session_class: type[Session] | None = None,
        **kw: Any,
    ) -> None:
        if router is not None:
            sync_class = sync_session_class or self.sync_session_class
            if not (
                isinstance(sync_class, type)
                and issubclass(sync_class, RoutingSyncSession)
            ):
                raise ConfigurationError(
                    "with a router, sync_session_class must subclass RoutingSyncSession"
                )
            if bind is None:
                bind = router.writer
            kw["router"] = router
            if default_role is not None:
                kw["default_role"] = default_role
        elif default_role is not None:
            raise ConfigurationError("default_role needs a router")
        super().__init__(bind, binds=binds, sync_session_class=sync_session_class, **kw)

    @property
    def router(self) -> Router | None:
        """The ``Router`` this session routes with, or ``None``."""
        return getattr(self.sync_session, "_routing_router", None)

    if hasattr(AsyncSession, "get_async_bind"):  # SQLAlchemy >= 2.1

        def get_async_bind(
            self,
            mapper: Any = None,
            clause: ClauseElement | None = None,
            bind: Any = None,
            **kw: Any,
        ) -> Any:
            """As ``AsyncSession.get_async_bind``, also for routed replicas."""
            router = self.router
            if router is not None and bind is None:
                # A replica is not one of the session's own binds, which is all
                # the base class can translate back to an AsyncEngine.
                resolved = self.sync_session.get_bind(mapper, clause=clause, **kw)
                if isinstance(resolved, Engine):
                    async_engine = router._to_async(resolved)
                    if async_engine is not None:
                        return async_engine
            return super().get_async_bind(mapper, clause, bind, **kw)


def routing_sessionmaker(
    router: Router,
    *,
    default_role: DefaultRole | None = None,
    **kw: Any,
) -> async_sessionmaker[RoutingSession]:
    """An ``async_sessionmaker`` of ``RoutingSession``s routed by ``router``."""
    if not isinstance(router, Router):
        raise ConfigurationError(
            f"routing_sessionmaker needs a Router, got {type(router).__name__}"
        )
    if "bind" in kw:
        raise ConfigurationError(
            "routing_sessionmaker takes no bind: the router's writer is the bind"
        )
    role = default_role if default_role is not None else router.default_role
    check_default_role(role)
    class_ = kw.pop("class_", RoutingSession)
    if not (isinstance(class_, type) and issubclass(class_, RoutingSession)):
        raise ConfigurationError("class_ must be RoutingSession or a subclass")
    bind: AsyncEngine = router.writer
    return async_sessionmaker(
        bind, class_=class_, router=router, default_role=role, **kw
    )
