"""Read-your-writes across commits and requests, on real streaming replication."""

from __future__ import annotations

import asyncio
import contextvars
from collections import Counter
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from typing import Any, TypeVar

import pytest
from sqlalchemy import event, func, insert, select
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from routing_db import (
    Router,
    RoutingSession,
    causal_token,
    current_causal_token,
    read_only,
    routing_sessionmaker,
)
from routing_db.testing import PostgresCluster

from .conftest import where
from .models import Item
from .routers import RouterMaker
from .waiting import until

pytestmark = pytest.mark.usefixtures("clean")
T = TypeVar("T")


@pytest.fixture
def paused(faults: PostgresCluster) -> PostgresCluster:
    """Replay paused on every replica (the fixture heals afterwards)."""
    for index in range(len(faults.replicas)):
        faults.pause_replay(index)
    return faults


async def fresh_context(
    coro_fn: Callable[..., Coroutine[Any, Any, T]], *args: Any
) -> T:
    """Run ``coro_fn(*args)`` as a new request would: in an empty context."""
    return await asyncio.create_task(coro_fn(*args), context=contextvars.Context())


async def test_no_stale_reads_with_replay_paused(
    Session: async_sessionmaker[RoutingSession],
    paused: PostgresCluster,
    ports: dict[str, Any],
) -> None:
    served: Counter[int] = Counter()
    stale = 0
    for n in range(200):
        async with Session() as session:
            session.add(Item(name=f"item-{n}"))
            await session.commit()
        async with Session() as session, read_only:
            count = await session.scalar(select(func.count()).select_from(Item))
            port, _ = await where(session)
            served[port] += 1
            stale += count != n + 1
    assert stale == 0
    # No replica has replayed anything: the writer served every read.
    assert set(served) == {ports["writer"]}


async def test_every_commit_form_records_the_token(
    router: Router, Session: async_sessionmaker[RoutingSession], paused: PostgresCluster
) -> None:
    async def commit_forms() -> list[str | None]:
        tokens = [current_causal_token()]
        async with Session() as session:
            session.add(Item(name="a"))
            await session.commit()
        tokens.append(current_causal_token())
        async with Session.begin() as session:
            session.add(Item(name="b"))
        tokens.append(current_causal_token())
        async with Session() as session, session.begin():
            session.add(Item(name="c"))
        tokens.append(current_causal_token())
        async with Session() as session, read_only:
            names = set(await session.scalars(select(Item.name)))
            assert names == {"a", "b", "c"}
            assert (await where(session))[1] is False  # replicas are paused
        return tokens

    before, *after = await fresh_context(commit_forms)
    assert before is None
    assert all(t is not None and t.startswith("pg:") for t in after)
    # Each commit moved the writer's WAL position forward.
    assert len(set(after)) == 3


@pytest.mark.parametrize("form", ["AsyncSession", "engine.begin", "connect+commit"])
async def test_a_commit_outside_routing_sessions_gives_read_your_writes(
    router: Router,
    Session: async_sessionmaker[RoutingSession],
    paused: PostgresCluster,
    form: str,
) -> None:
    """A test, a migration or an admin task writes through the router's writer
    without a routing session: its commit records the context's token all
    the same, and a later request with that token reads the row."""

    async def write() -> str | None:
        if form == "AsyncSession":
            async with AsyncSession(router.writer) as session:
                session.add(Item(name="plain"))
                await session.commit()
        elif form == "engine.begin":
            async with router.writer.begin() as connection:
                await connection.execute(insert(Item).values(name="plain"))
        else:
            async with router.writer.connect() as connection:
                await connection.execute(insert(Item).values(name="plain"))
                await connection.commit()
        return current_causal_token()

    async def read(token: str | None) -> tuple[set[str], bool]:
        async with causal_token(token), Session() as session, read_only:
            names = set(await session.scalars(select(Item.name)))
            return names, (await where(session))[1]

    token = await fresh_context(write)
    assert token is not None and token.startswith("pg:")
    # Replay is paused: only the writer has the row, and serves the read.
    assert await fresh_context(read, token) == ({"plain"}, False)


@pytest.mark.parametrize(
    "form", ["routing session", "AsyncSession", "connection", "engine"]
)
async def test_a_write_in_autocommit_gives_read_your_writes_without_commit(
    paused: PostgresCluster, make_router: RouterMaker, form: str
) -> None:
    """In AUTOCOMMIT each statement commits on its own and no COMMIT follows:
    code that never calls commit() still gets read-your-writes."""
    autocommit = {"isolation_level": "AUTOCOMMIT"}
    router = make_router(
        paused.writer_url,
        paused.replica_urls,
        writer_kwargs=autocommit if form == "engine" else {},
    )
    Session = routing_sessionmaker(router)

    async def write() -> str | None:
        if form == "AsyncSession":
            plain = router.writer.execution_options(**autocommit)
            async with AsyncSession(plain) as session:
                await session.execute(insert(Item).values(name="autocommit"))
        elif form == "connection":
            async with router.writer.connect() as connection:
                await connection.execution_options(**autocommit)
                await connection.execute(insert(Item).values(name="autocommit"))
        else:
            async with Session() as session:
                if form == "routing session":
                    await session.connection(execution_options=autocommit)
                await session.execute(insert(Item).values(name="autocommit"))
        # No commit(): the row is there all the same, on the writer only.
        return current_causal_token()

    async def read(token: str | None) -> tuple[set[str], bool]:
        async with causal_token(token), Session() as session, read_only:
            names = set(await session.scalars(select(Item.name)))
            return names, (await where(session))[1]

    async with router:
        token = await fresh_context(write)
        assert token is not None and token.startswith("pg:")
        assert await fresh_context(read, token) == ({"autocommit"}, False)


async def test_the_token_stays_in_its_context(
    Session: async_sessionmaker[RoutingSession], paused: PostgresCluster
) -> None:
    async def write() -> str | None:
        async with Session() as session:
            session.add(Item(name="mine"))
            await session.commit()
        return current_causal_token()

    token = await fresh_context(write)
    assert token is not None
    # Neither the caller nor an unrelated request inherited it.
    assert current_causal_token() is None

    async def peek() -> str | None:
        return current_causal_token()

    assert await fresh_context(peek) is None


async def test_a_token_string_carries_reads_across_requests(
    Session: async_sessionmaker[RoutingSession],
    paused: PostgresCluster,
    ports: dict[str, Any],
) -> None:
    async def post(n: int) -> str:
        async with Session() as session:
            session.add(Item(name=f"job-{n}"))
            await session.commit()
        token = current_causal_token()
        assert token is not None
        return token

    async def get(token: str, n: int) -> tuple[bool, int]:
        async with causal_token(token), Session() as session, read_only:
            names = set(await session.scalars(select(Item.name)))
            return f"job-{n}" in names, (await where(session))[0]

    for n in range(50):
        token = await fresh_context(post, n)
        seen, port = await fresh_context(get, token, n)
        assert seen
        assert port == ports["writer"]


async def test_without_the_token_a_paused_replica_serves(
    Session: async_sessionmaker[RoutingSession],
    paused: PostgresCluster,
    ports: dict[str, Any],
) -> None:
    """The control: the tests above would fail if routing ignored the token."""

    async def post() -> None:
        async with Session() as session:
            session.add(Item(name="unseen"))
            await session.commit()

    async def get() -> tuple[bool, int]:
        async with Session() as session, read_only:
            names = set(await session.scalars(select(Item.name)))
            return "unseen" in names, (await where(session))[0]

    await fresh_context(post)
    seen, port = await fresh_context(get)
    assert port in ports["replicas"]
    assert not seen  # a stale read: exactly what the token prevents


async def test_reads_return_to_replicas_once_replay_resumes(
    Session: async_sessionmaker[RoutingSession],
    paused: PostgresCluster,
    ports: dict[str, Any],
) -> None:
    async with Session() as session:
        session.add(Item(name="later"))
        await session.commit()
    async with Session() as session, read_only:
        assert (await where(session))[0] == ports["writer"]
    for index in range(len(paused.replicas)):
        paused.resume_replay(index)
    await paused.await_replicated()
    served = set()
    for _ in range(4):
        async with Session() as session, read_only:
            assert "later" in set(await session.scalars(select(Item.name)))
            served.add((await where(session))[0])
    assert served == ports["replicas"]


async def test_each_replica_is_judged_by_its_own_position(
    Session: async_sessionmaker[RoutingSession],
    faults: PostgresCluster,
    ports: dict[str, Any],
) -> None:
    faults.pause_replay(0)
    paused_port = faults.replicas[0].port
    served: Counter[int] = Counter()
    for n in range(40):
        async with Session() as session:
            session.add(Item(name=f"n{n}"))
            await session.commit()
        async with Session() as session, read_only:
            names = set(await session.scalars(select(Item.name)))
            assert f"n{n}" in names
            served[(await where(session))[0]] += 1
    assert paused_port not in served
    # The caught-up replica did serve: one replica's position is not
    # stretched to cover the other.
    assert served.keys() & (ports["replicas"] - {paused_port})


@pytest.fixture
async def waiting_router(cluster: PostgresCluster) -> AsyncIterator[Router]:
    router = Router.from_urls(
        cluster.writer_url, cluster.replica_urls, causal_wait_timeout=20
    )
    try:
        yield router
    finally:
        await router.dispose()


async def test_causal_wait_timeout_waits_for_a_replica(
    waiting_router: Router, paused: PostgresCluster, ports: dict[str, Any]
) -> None:
    Session = routing_sessionmaker(waiting_router)
    async with Session() as session:
        session.add(Item(name="awaited"))
        await session.commit()

    async def read() -> tuple[bool, int]:
        async with Session() as session, read_only:
            names = set(await session.scalars(select(Item.name)))
            return "awaited" in names, (await where(session))[0]

    # The read is waiting once it has asked the replicas for their replay
    # position more than once each (every ask checks out a connection).
    asked = Counter[str]()
    for replica in waiting_router.replicas:
        event.listen(
            replica.sync_engine, "checkout", lambda *_: asked.update(["replica"])
        )
    reader = asyncio.create_task(read())
    await until(lambda: asked["replica"] > 2 * len(waiting_router.replicas))
    assert not reader.done()
    paused.resume_replay(1)
    seen, port = await reader
    assert seen
    assert port == paused.replicas[1].port


async def test_a_router_without_positions_uses_the_time_window(
    cluster: PostgresCluster,
    make_router: RouterMaker,
) -> None:
    # sticky_seconds on a PostgreSQL router only matters for a token that has
    # no position; one carried from a backend without positions, for example.
    router = make_router(cluster.writer_url, cluster.replica_urls)
    Session = routing_sessionmaker(router)
    async with causal_token("t:9999999999.0"), Session() as session, read_only:
        assert (await where(session))[1] is False
    async with causal_token("t:1.0"), Session() as session, read_only:
        assert (await where(session))[1] is True


@pytest.fixture
def writer_without_positions(faults: PostgresCluster) -> Iterator[str]:
    """A writer URL whose user may not read the WAL position (after COMMIT too)."""
    faults.sql(
        faults.primary,
        "CREATE ROLE nolsn LOGIN;"
        " GRANT ALL ON ALL TABLES IN SCHEMA public TO nolsn;"
        " GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO nolsn;"
        " REVOKE EXECUTE ON FUNCTION pg_current_wal_lsn() FROM PUBLIC",
    )
    try:
        yield (
            make_url(faults.writer_url)
            .set(username="nolsn")
            .render_as_string(hide_password=False)
        )
    finally:
        faults.sql(
            faults.primary,
            "GRANT EXECUTE ON FUNCTION pg_current_wal_lsn() TO PUBLIC;"
            " DROP OWNED BY nolsn; DROP ROLE nolsn",
        )


async def test_a_commit_of_unknown_position_is_not_served_by_an_older_one(
    faults: PostgresCluster,
    writer_without_positions: str,
    ports: dict[str, Any],
    make_router: RouterMaker,
) -> None:
    """An older position reached says nothing of a newer commit's."""
    older = await faults.await_replicated()
    for index in range(len(faults.replicas)):
        await faults.apause_replay(index)
    router = make_router(
        writer_without_positions, faults.replica_urls, sticky_seconds=60
    )
    Session = routing_sessionmaker(router)
    async with causal_token(f"pg:{older}"):  # every replica has reached it
        async with Session() as session:
            session.add(Item(name="newer"))
            await session.commit()  # its position cannot be read
        assert current_causal_token() is not None
        async with Session() as session, read_only:
            assert await where(session) == (ports["writer"], False)
            assert list(await session.scalars(select(Item.name))) == ["newer"]


async def test_a_commit_of_unknown_position_keeps_reads_on_the_writer_until_known(
    faults: PostgresCluster,
    writer_without_positions: str,
    ports: dict[str, Any],
    make_router: RouterMaker,
) -> None:
    """Not for a fixed time: until the writer answers with its position."""
    for index in range(len(faults.replicas)):
        await faults.apause_replay(index)
    router = make_router(
        writer_without_positions, faults.replica_urls, sticky_seconds=0.05
    )
    Session = routing_sessionmaker(router)

    async def read() -> tuple[int, bool]:
        async with Session() as session, read_only:
            served = await where(session)
            names = list(await session.scalars(select(Item.name)))
        assert names == ["unsure"]  # never stale, wherever it was served
        return served

    async with Session() as session:
        session.add(Item(name="unsure"))
        await session.commit()  # its position cannot be read
    # The time window is long over (a wall-clock wait, not replication's).
    await asyncio.sleep(0.2)
    assert await read() == (ports["writer"], False)
    # The writer answers with its position again, and the replicas
    # replay it: the context's reads go back to them.
    faults.sql(
        faults.primary, "GRANT EXECUTE ON FUNCTION pg_current_wal_lsn() TO nolsn"
    )
    for index in range(len(faults.replicas)):
        faults.resume_replay(index)
    await faults.await_replicated()
    port, standby = await read()
    assert standby and port in ports["replicas"]
