"""RoutingSession / routing_sessionmaker argument errors (no I/O)."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session as SyncSession

from routing_db import (
    ConfigurationError,
    Router,
    RoutingSession,
    RoutingSyncSession,
    routing_sessionmaker,
)


@pytest.fixture
def router(sqlite_router: Router) -> Router:
    return sqlite_router


def test_sessionmaker_makes_routing_sessions_on_the_writer(router: Router) -> None:
    session = routing_sessionmaker(router, autoflush=False)()
    assert isinstance(session, RoutingSession) and isinstance(session, AsyncSession)
    assert session.router is router
    assert session.bind is router.writer
    assert session.sync_session.autoflush is False


def test_sessionmaker_call_merges_keywords_as_async_sessionmaker_does(
    router: Router,
) -> None:
    Session = routing_sessionmaker(router, info={"a": 1}, expire_on_commit=False)
    assert isinstance(Session, async_sessionmaker)
    plain = Session()
    assert plain.info == {"a": 1} and plain.sync_session.expire_on_commit is False
    merged = Session(info={"b": 2}, expire_on_commit=True)
    assert merged.info == {"a": 1, "b": 2}
    assert merged.sync_session.expire_on_commit is True
    assert Session.kw["info"] == {"a": 1}  # the factory's own dict is untouched
    Session.configure(autoflush=False)
    assert Session().sync_session.autoflush is False


def test_default_role_comes_from_the_router_unless_given(tmp_path: Path) -> None:
    auto = Router.from_urls(
        f"sqlite+aiosqlite:///{tmp_path / 'a.db'}", default_role="auto"
    )
    assert routing_sessionmaker(auto)().sync_session._routing_auto is True  # type: ignore[attr-defined]
    explicit = routing_sessionmaker(auto, default_role="writer")()
    assert explicit.sync_session._routing_auto is False  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("make", "expect"),
    [
        (lambda r: routing_sessionmaker(object()), "needs a Router"),  # type: ignore[call-overload]
        (lambda r: routing_sessionmaker(r, bind=r.writer), "takes no bind"),
        (lambda r: routing_sessionmaker(r, class_=AsyncSession), "class_ must be"),
        (lambda r: routing_sessionmaker(r, default_role="replica"), "default_role"),  # type: ignore[call-overload]
        (lambda r: RoutingSession(r.writer, default_role="auto"), "needs a router"),
        (
            lambda r: RoutingSession(router=r, sync_session_class=SyncSession),
            "RoutingSyncSession",
        ),
    ],
)
def test_argument_errors(router: Router, make: object, expect: str) -> None:
    with pytest.raises(ConfigurationError, match=expect):
        make(router)  # type: ignore[operator]


def test_a_subclass_with_another_sync_session_is_refused_only_with_a_router(
    router: Router,
) -> None:
    class Fine(RoutingSession):
        pass

    # As in SQLAlchemy's own tests of AsyncSession subclasses: defining one,
    # and using it without a router, is exactly AsyncSession's behaviour.
    class Plain(RoutingSession):
        sync_session_class = SyncSession

    assert Fine.sync_session_class is RoutingSyncSession
    session = Plain(router.writer)
    assert type(session.sync_session) is SyncSession
    assert session.router is None
    for make in (
        lambda: Plain(router=router),
        lambda: routing_sessionmaker(router, class_=Plain),
        lambda: routing_sessionmaker(router, sync_session_class=SyncSession),
        lambda: Fine(router=router, sync_session_class=SyncSession),
    ):
        with pytest.raises(
            ConfigurationError, match="must subclass RoutingSyncSession"
        ):
            make()
    assert type(Fine(router=router).sync_session) is RoutingSyncSession
