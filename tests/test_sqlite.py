"""aiosqlite, what ``make demo`` runs: routing, a read-only replica connection,
and read-your-writes by time window (SQLite has no replication positions).

The "replica" is the same file opened read-only; which connection ran a
statement is asked of SQLite itself (``PRAGMA query_only`` is on only on
the replica's connections).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from routing_db import (
    ReadOnlyViolation,
    Router,
    causal_token,
    current_causal_token,
    read_only,
    routing_sessionmaker,
    use_writer,
)

from .routers import RouterMaker


@pytest.fixture
async def router(tmp_path: Path, make_router: RouterMaker) -> Router:
    path = tmp_path / "demo.db"
    router = make_router(
        f"sqlite+aiosqlite:///{path}",
        [f"sqlite+aiosqlite:///file:{path}?mode=ro&uri=true"],
        sticky_seconds=30,
    )
    await created(router, "CREATE TABLE notes (body TEXT)")
    return router


async def created(router: Router, ddl: str) -> None:
    """Run ``ddl`` as the app's start-up would: in a context of its own (its
    commit keeps that context's reads on the writer for sticky_seconds)."""

    async def create() -> None:
        async with router.writer.begin() as conn:
            await conn.execute(text(ddl))

    await asyncio.create_task(create(), context=contextvars.Context())


async def on_replica(session: AsyncSession) -> bool:
    """The replica's connections are query_only: ask SQLite which one ran it."""
    return bool(
        await session.scalar(text("SELECT query_only FROM pragma_query_only()"))
    )


async def test_reads_stay_on_the_writer_inside_the_window(router: Router) -> None:
    Session = routing_sessionmaker(router)

    async def request() -> tuple[bool, bool, str | None]:
        async with Session() as session, read_only:
            before = await on_replica(session)
        async with Session() as session:
            await session.execute(text("INSERT INTO notes VALUES ('x')"))
            await session.commit()
        async with Session() as session, read_only:
            after = await on_replica(session)
        return before, after, current_causal_token()

    task = asyncio.create_task(request(), context=contextvars.Context())
    before, after, token = await task
    assert before is True  # nothing written yet: the replica serves
    assert after is False  # within sticky_seconds of the write: the writer
    assert token is not None and token.startswith("t:")


async def test_an_old_time_token_no_longer_pins(router: Router) -> None:
    Session = routing_sessionmaker(router)
    async with causal_token("t:1.0"), Session() as session, read_only:
        assert await on_replica(session) is True


async def test_routing_on_sqlite(router: Router) -> None:
    Session = routing_sessionmaker(router)
    async with Session() as session:
        assert await on_replica(session) is False  # no flag: the writer
    async with Session() as session, read_only:
        assert await on_replica(session) is True
        async with use_writer:
            assert await on_replica(session) is False


async def test_the_replica_connection_refuses_writes(router: Router) -> None:
    Session = routing_sessionmaker(router)
    async with Session() as session, read_only:
        # Past the classifier, on the replica's own connection: SQLite
        # refuses (SQLITE_READONLY), and that is a ReadOnlyViolation.
        connection = await session.connection()
        with pytest.raises(ReadOnlyViolation):
            await connection.exec_driver_sql("INSERT INTO notes VALUES ('no')")
    async with router.writer.connect() as conn:
        assert (await conn.scalar(text("SELECT count(*) FROM notes"))) == 0


async def test_stop_ends_the_monitor_even_if_a_poll_swallowed_the_cancel(
    tmp_path: Path,
) -> None:
    # On Python 3.11 asyncio.wait_for can swallow a cancellation (cpython#86296);
    # a poll that does so must not leave router.stop() waiting forever.
    router = Router.from_urls(
        f"sqlite+aiosqlite:///{tmp_path / 'm.db'}", monitor_interval=0.01
    )
    monitor = router._monitor
    polled = asyncio.Event()

    async def swallowing_poll() -> None:
        polled.set()
        if not swallowed:
            swallowed.append(True)
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(10)

    swallowed: list[bool] = []
    monitor.poll_once = swallowing_poll  # type: ignore[method-assign]
    monitor.start()
    await polled.wait()
    stopping = asyncio.ensure_future(monitor.stop())
    done, _ = await asyncio.wait({stopping}, timeout=2)
    await router.dispose()
    assert stopping in done, "router.stop() did not return"
    assert swallowed and not monitor.running


async def test_a_router_started_before_the_app_creates_the_file_ejects_nothing(
    tmp_path: Path, make_router: RouterMaker, caplog: pytest.LogCaptureFixture
) -> None:
    # The zero-setup path: the lifespan starts the router, then the app
    # creates its tables (and the file).
    path = tmp_path / "later.db"
    router = make_router(
        f"sqlite+aiosqlite:///{path}",
        [f"sqlite+aiosqlite:///file:{path}?mode=ro&uri=true"],
        monitor_interval=0.05,
    )
    async with router:
        await router.poll()
        await created(router, "CREATE TABLE later (body TEXT)")
        Session = routing_sessionmaker(router)
        async with Session() as session, read_only:
            assert await on_replica(session)
    assert router.status()[1]["ejections"] == 0
    assert not [r for r in caplog.records if "ejected" in r.getMessage()]


async def test_a_router_without_replicas_reads_on_the_writer_without_a_warning(
    tmp_path: Path, make_router: RouterMaker, caplog: pytest.LogCaptureFixture
) -> None:
    # No replica configured (a development setup) is not an outage: read_only
    # reads go to the writer and nothing says "no replica can serve reads".
    router = make_router(f"sqlite+aiosqlite:///{tmp_path / 'alone.db'}")
    async with router, routing_sessionmaker(router)() as session, read_only:
        assert not await on_replica(session)
    assert not [r for r in caplog.records if r.levelname == "WARNING"]
