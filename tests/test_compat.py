"""Each private attribute routing_db uses still has the shape it relies on.

Runs on whichever SQLAlchemy is installed (CI: 2.0 and 2.1): an upgrade that
renames or reshapes one fails here, by name, rather than somewhere in routing.
"""

from __future__ import annotations

import ast
import asyncio
import inspect
import re
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Column, Integer, MetaData, Table, create_engine, func, select
from sqlalchemy.orm import Session
from sqlalchemy.pool import QueuePool
from sqlalchemy.util import greenlet_spawn
from sqlalchemy.util.concurrency import in_greenlet

import routing_db
from routing_db import _compat
from routing_db._backends.registry import backend_for
from routing_db._compat import (
    INTERNALS,
    asyncpg_socket,
    caller_frames,
    detach,
    for_update,
    held,
    idle,
    innermost_transaction,
    max_overflow,
    mysql_socket,
    mysql_transport,
    on_connect_isolation_level,
    pause,
    rewind_close,
    select_list,
    wrap_creator,
    wrap_pool_connect,
)

PACKAGE = Path(routing_db.__file__).parent
items = Table("items", MetaData(), Column("id", Integer, primary_key=True))


@pytest.fixture
def session() -> Any:
    engine = create_engine("sqlite://")
    with Session(engine) as session:
        yield session
    engine.dispose()


def test_a_session_transaction_maps_its_binds_to_its_connections(
    session: Session,
) -> None:
    engine = session.get_bind()
    assert idle(innermost_transaction(session))
    session.execute(select(1))
    transaction = innermost_transaction(session)
    connection = held(transaction, engine)
    assert connection is not None and connection is session.connection()
    assert not idle(transaction)
    with session.begin_nested():
        # From a savepoint, the root's connection is found through _parent.
        assert held(innermost_transaction(session), engine) is connection
    detach(session, connection)
    assert held(innermost_transaction(session), engine) is None
    assert idle(innermost_transaction(session))
    connection.close()


def test_rewind_close_points_the_session_at_what_is_left(session: Session) -> None:
    session.execute(select(1))
    root = innermost_transaction(session)
    session.begin_nested()
    nested = innermost_transaction(session)
    assert nested is not None and nested is not root
    nested.close()
    rewind_close(session, nested)
    assert innermost_transaction(session) is root
    session.close()
    assert innermost_transaction(session) is None


def test_selects_say_whether_they_lock_and_what_they_list() -> None:
    plain = select(items.c.id, func.nextval("s"))
    assert not for_update(plain)
    assert for_update(plain.with_for_update())
    assert for_update(plain.with_for_update(read=True))
    listed = list(select_list(plain))
    assert listed[0] is items.c.id
    assert getattr(listed[1], "name", None) == "nextval"


def test_a_dialect_keeps_the_isolation_level_of_create_engine() -> None:
    engine = create_engine("sqlite://")
    on_connect = create_engine("sqlite://", isolation_level="AUTOCOMMIT")
    try:
        assert on_connect_isolation_level(engine.dialect) is None
        assert on_connect_isolation_level(on_connect.dialect) == "AUTOCOMMIT"
        # A connection's own level is in its statements' execution options.
        with engine.connect() as connection:
            connection.execution_options(isolation_level="AUTOCOMMIT")
            context = connection.execute(select(1)).context
            assert context.execution_options["isolation_level"] == "AUTOCOMMIT"
    finally:
        engine.dispose()
        on_connect.dispose()


def test_a_queue_pool_has_a_max_overflow_and_a_replaceable_connect() -> None:
    def creator() -> Any:
        raise AssertionError("the wrapper stops before a connection is made")

    pool = QueuePool(creator, pool_size=2, max_overflow=3)
    assert max_overflow(pool) == 3
    calls: list[str] = []

    def wrap(connect: Any) -> Any:
        assert callable(connect)

        def counted() -> Any:
            calls.append("connect")
            raise LookupError  # stop before a DBAPI connection is needed

        return counted

    wrap_pool_connect(pool, wrap)
    with pytest.raises(LookupError):
        pool.connect()
    assert calls == ["connect"]
    assert type(pool).connect is QueuePool.connect  # the class is untouched


async def test_the_callers_frames_include_those_of_the_awaiting_coroutine() -> None:
    def sync_side() -> list[str]:
        return [frame.f_code.co_name for frame in caller_frames()]

    names = await greenlet_spawn(sync_side)
    # This coroutine's frame is on the greenlet that started SQLAlchemy's.
    assert inspect.currentframe().f_code.co_name in names  # type: ignore[union-attr]


async def test_an_asyncpg_connection_has_a_socket_transport() -> None:
    asyncpg = pytest.importorskip("asyncpg")
    slots = asyncpg.connection.Connection.__slots__
    assert "_transport" in slots
    assert asyncpg_socket(object()) is None  # and anything else has none


def test_an_aiomysql_connection_is_opened_by_connect() -> None:
    aiomysql = pytest.importorskip("aiomysql")
    assert callable(aiomysql.Connection._connect)


def test_the_mysql_drivers_keep_their_stream_where_it_is_looked_for() -> None:
    aiomysql = pytest.importorskip("aiomysql")
    asyncmy = pytest.importorskip("asyncmy")
    # aiomysql sets its stream writer in __init__, asyncmy declares a slot.
    assert "self._writer = None" in inspect.getsource(aiomysql.Connection.__init__)
    assert hasattr(asyncmy.connection.Connection, "_transport")
    assert mysql_transport(object()) is None and mysql_socket(object()) is None


def _private_names(path: Path) -> set[str]:
    """Private attribute names a module reads, writes or passes to getattr."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Attribute):
            found.add(node.attr)
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("getattr", "setattr", "hasattr")
            and isinstance(node.args[1], ast.Constant)
        ):
            found.add(str(node.args[1].value))
    return {name for name in found if re.fullmatch(r"_[a-z]\w*", name)}


def _listed() -> set[str]:
    return {name for key in INTERNALS for name in re.findall(r"\b_[a-z]\w*", key)}


class _Reached(Exception):
    pass


@pytest.mark.parametrize(
    "url",
    ["mysql+aiomysql://h/db", "mysql+asyncmy://h/db", "postgresql+asyncpg://h/db"],
)
async def test_the_dbapi_adapters_connect_through_async_creator_fn(url: str) -> None:
    pytest.importorskip(url.split("+")[1].split(":")[0])
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(url)
    seen: list[tuple[Any, ...]] = []

    async def connect(*args: Any, **kwargs: Any) -> Any:
        seen.append((args, kwargs))
        raise _Reached

    dbapi = engine.sync_engine.dialect.loaded_dbapi
    arguments: dict[str, Any] = {"async_creator_fn": connect}
    backend = backend_for(engine.dialect.name)
    assert backend is not None
    default = backend.creators[engine.dialect.driver]
    wrap_creator(arguments, default, lambda inner: inner, "a")
    wrap_creator(arguments, default, lambda inner: lambda *a, **k: inner(*a, **k), "b")
    wrapped = arguments["async_creator_fn"]
    wrap_creator(arguments, default, lambda inner: inner, "a")  # once for each mark
    assert arguments["async_creator_fn"] is wrapped
    arguments["host"] = "h"
    with pytest.raises(_Reached):
        await greenlet_spawn(lambda: dbapi.connect(**arguments))
    assert seen == [((), {"host": "h"})]
    await engine.dispose()


def test_the_listed_internals_are_exactly_the_ones_used() -> None:
    own = {"_root"}  # this module's own helper
    used = _private_names(Path(_compat.__file__)) - own
    assert used == _listed()


def test_no_other_module_reaches_into_those_internals() -> None:
    listed = _listed() | {"_flushing", "_is_clean", "_connection_for_bind",
                          "_execution_options"}  # fmt: skip
    for path in PACKAGE.rglob("*.py"):
        if path.name != "_compat.py":
            assert not _private_names(path) & listed, path


async def test_pause_yields_to_the_event_loop_in_sqlalchemy_greenlets() -> None:
    ticks: list[int] = []

    async def tick() -> None:
        for n in range(3):
            ticks.append(n)
            await asyncio.sleep(0)

    other = asyncio.ensure_future(tick())
    await greenlet_spawn(pause, 0.02)  # time.sleep would stop tick() here
    assert ticks == [0, 1, 2]
    await other


def test_pause_sleeps_in_a_thread() -> None:
    assert not in_greenlet()
    pause(0)  # no event loop, no greenlet: time.sleep
