"""``RoutingSession`` and ``routing_sessionmaker``: the asyncio face of routing."""

from __future__ import annotations

from typing import Any, TypeVar, overload

from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    AsyncSessionTransaction,
    async_sessionmaker,
)
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ClauseElement

from .._decide.context import committing
from .._decide.decision import DefaultRole
from .._exceptions import ConfigurationError
from .._router.router import Router
from .makers import maker_options
from .sync_session import RoutingSyncSession, first_bind

__all__ = ["RoutingSession", "RoutingSessionTransaction", "routing_sessionmaker"]


def _end_replica(session: Session) -> None:
    if isinstance(session, RoutingSyncSession):
        session._routing_end_replica()


# A ``begin()`` block that fails, or ``rollback()`` called on its transaction,
# rolls back through the transaction object, not the session's rollback():
# the replica is ended there first, so that a dead one can neither mask the
# application's error nor keep the writer's rollback from running. A block
# that ends well commits inside committing(), as commit() does.
class RoutingSessionTransaction(AsyncSessionTransaction):
    """``AsyncSessionTransaction`` whose rollback ends a replica's read first."""

    async def commit(self) -> None:
        """Commit; a lost COMMIT is ``CommitOutcomeUnknown``."""
        with committing():
            await super().commit()

    async def rollback(self) -> None:
        """Roll back; a replica connection that died is dropped, not raised."""
        try:
            await self.session.run_sync(_end_replica)
        finally:
            await super().rollback()

    async def __aexit__(self, type_: Any, value: Any, traceback: Any) -> None:
        if type_ is None:
            with committing():  # the block ended well: this commits
                await super().__aexit__(type_, value, traceback)
            return
        try:
            await self.session.run_sync(_end_replica)
        finally:
            await super().__aexit__(type_, value, traceback)


class RoutingSession(AsyncSession):
    """An ``AsyncSession`` that sends each statement to the writer or a replica."""

    sync_session_class: type[Session] = RoutingSyncSession

    def __init__(
        self,
        bind: Any = None,
        *,
        router: Router | None = None,
        default_role: DefaultRole | None = None,
        **kw: Any,
    ) -> None:
        # Lean on purpose: one runs per request. The sync session is a plain
        # Session construction (binds... go to it as AsyncSession sends them);
        # routing is configured on it afterwards. Without a router this is an
        # AsyncSession in every respect, whatever sync_session_class it has.
        if router is not None:
            _check_sync_class(kw.get("sync_session_class") or self.sync_session_class)
        super().__init__(first_bind(bind, router, default_role), **kw)
        if router is None:
            return
        sync: Any = self.sync_session  # checked above: a RoutingSyncSession
        sync._routing_route_with(router, default_role, binds=bool(kw.get("binds")))

    async def commit(self) -> None:
        """As ``AsyncSession.commit``; a lost COMMIT is ``CommitOutcomeUnknown``."""
        with committing():
            await super().commit()

    def begin(self) -> AsyncSessionTransaction:
        """As ``AsyncSession.begin``; a dead replica never masks the block's error."""
        return RoutingSessionTransaction(self)

    def begin_nested(self) -> AsyncSessionTransaction:
        """As ``AsyncSession.begin_nested``, with ``begin()``'s replica handling."""
        return RoutingSessionTransaction(self, nested=True)

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
                    async_engine = router.topology.app_engine(resolved)
                    if async_engine is not None:
                        return async_engine
            return super().get_async_bind(mapper, clause, bind, **kw)


def _check_sync_class(sync_class: Any) -> None:
    # Refused only where it meets a router: routing lives in the sync class.
    if not (
        isinstance(sync_class, type) and issubclass(sync_class, RoutingSyncSession)
    ):
        raise ConfigurationError(
            "with a router, sync_session_class must subclass RoutingSyncSession, "
            f"got {getattr(sync_class, '__name__', sync_class)!r}"
        )


class _RoutingSessionMaker(async_sessionmaker[RoutingSession]):
    """``async_sessionmaker`` that makes a session without merging keywords
    when the call passes none (one runs per request)."""

    def __call__(self, **local_kw: Any) -> RoutingSession:
        if local_kw:
            return super().__call__(**local_kw)
        # What the base class builds from an empty local_kw, without its loop.
        return self.class_(**self.kw)


S = TypeVar("S", bound=RoutingSession)


@overload
def routing_sessionmaker(
    router: Router,
    *,
    class_: type[S],
    default_role: DefaultRole | None = None,
    **kw: Any,
) -> async_sessionmaker[S]: ...


@overload
def routing_sessionmaker(
    router: Router, *, default_role: DefaultRole | None = None, **kw: Any
) -> async_sessionmaker[RoutingSession]: ...


def routing_sessionmaker(
    router: Router,
    *,
    default_role: DefaultRole | None = None,
    **kw: Any,
) -> async_sessionmaker[Any]:
    """An ``async_sessionmaker`` of ``RoutingSession``s (or ``class_``'s, a
    subclass) routed by ``router``."""
    if not isinstance(router, Router):
        raise ConfigurationError(
            f"routing_sessionmaker needs a Router, got {type(router).__name__}"
        )
    kw = maker_options(
        router, default_role, kw, base=RoutingSession, maker="routing_sessionmaker"
    )
    _check_sync_class(kw.get("sync_session_class") or kw["class_"].sync_session_class)
    bind: AsyncEngine = router.writer
    return _RoutingSessionMaker(bind, router=router, **kw)
