"""SQLModel's sessions with routing (needs ``sqlmodel``: the ``sqlmodel`` extra).

    from routing_db import routing_sessionmaker
    from routing_db.sqlmodel import RoutingSession

    Session = routing_sessionmaker(router, class_=RoutingSession)
    async with Session() as session, read_only:
        heroes = (await session.exec(select(Hero))).all()   # on a replica

``exec()`` keeps SQLModel's typing and routes as ``execute()`` does: SQLModel
runs it through ``Session.execute``, where routing happens.
``routing_sync_sessionmaker(sync_router, class_=RoutingSyncSession)`` is the
sync face's.
"""

from __future__ import annotations

from ._exceptions import missing_extra
from ._session import async_session as _async_session
from ._session import sync_session as _session

try:
    import sqlmodel
    from sqlmodel.ext.asyncio.session import AsyncSession as _SQLModelAsyncSession
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise missing_extra("routing_db.sqlmodel", "sqlmodel", "sqlmodel") from exc

__all__ = ["RoutingSession", "RoutingSyncSession"]


class RoutingSyncSession(sqlmodel.Session, _session.RoutingSyncSession):
    """``sqlmodel.Session`` that routes each statement, ``exec()`` included."""


class RoutingSession(_SQLModelAsyncSession, _async_session.RoutingSession):
    """SQLModel's ``AsyncSession`` that routes each statement, ``exec()`` included."""

    sync_session_class: type[sqlmodel.Session] = RoutingSyncSession
