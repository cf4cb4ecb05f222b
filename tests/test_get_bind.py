"""The real ``get_bind`` routes exactly as ``decide()`` says, in every case.

``decide()`` is the one place the rules live (``test_decision`` checks it
against the design); this drives ``RoutingSyncSession.get_bind`` over every
combination of statement kind, scope, option, default role and "this
transaction wrote", on SQLite engines (no I/O is needed to route).
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import Column, Integer, MetaData, Table, insert, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from routing_db import ReadOnlyViolation, Router, read_only, routing_sessionmaker
from routing_db import use_writer as use_writer_scope
from routing_db._decide.classify import Kind
from routing_db._decide.context import Scope
from routing_db._decide.decision import DefaultRole, RoleOption, Route, decide

table = Table("t", MetaData(), Column("id", Integer, primary_key=True))

SCOPES: dict[Scope, Callable[[], contextlib.AbstractContextManager[Any]]] = {
    Scope.NONE: contextlib.nullcontext,
    Scope.READ_ONLY: lambda: read_only,
    Scope.WRITER: lambda: use_writer_scope,
}
OPTIONS: list[RoleOption] = [None, "writer", "replica"]
DEFAULTS: list[DefaultRole] = ["writer", "auto"]
CASES = [
    case
    for case in itertools.product(Kind, Scope, OPTIONS, DEFAULTS, [False, True])
    # A bare connection request carries no statement to put an option on.
    if not (case[0] is Kind.CONNECTION and case[2] is not None)
]


def statement(kind: Kind, option: RoleOption) -> Any:
    if kind is Kind.CONNECTION:
        return None
    built = select(table) if kind is Kind.READ else insert(table)
    return built if option is None else built.execution_options(routing_db_role=option)


@pytest.fixture
def router(sqlite_router: Router) -> Router:
    return sqlite_router


@pytest.mark.parametrize(("kind", "scope", "option", "default", "wrote"), CASES)
async def test_get_bind_routes_as_decide_says(
    router: Router,
    kind: Kind,
    scope: Scope,
    option: RoleOption,
    default: DefaultRole,
    wrote: bool,
) -> None:
    expected = decide(
        kind, scope=scope, option=option, default_role=default, wrote=wrote
    )
    session = routing_sessionmaker(router, default_role=default)()

    def route(sync: Session) -> Route:
        if wrote:
            sync._routing_state().wrote = True  # type: ignore[attr-defined]
        try:
            bind = sync.get_bind(clause=statement(kind, option))
        except ReadOnlyViolation:
            return Route.REFUSE
        if bind is router.writer.sync_engine:
            return Route.WRITER
        assert bind in [replica.sync_engine for replica in router.replicas]
        return Route.REPLICA

    try:
        with SCOPES[scope]():
            got = await session.run_sync(route)
    finally:
        await session.close()
    assert got is expected


class _Base(DeclarativeBase):
    pass


class Note(_Base):
    __tablename__ = "hint_notes"
    id: Mapped[int] = mapped_column(primary_key=True)


async def test_a_refused_flush_says_where_read_only_may_come_from(
    router: Router,
) -> None:
    async with router.writer.begin() as connection:
        await connection.run_sync(_Base.metadata.create_all)
    async with routing_sessionmaker(router)() as session, read_only:
        session.add(Note(id=1))
        with pytest.raises(ReadOnlyViolation) as refused:
            await session.flush()
        assert session.new  # the pending object is kept
    assert "use_writer" in str(refused.value)
    assert "roles_by_method" in str(refused.value)
