"""Round trips added by read-your-writes, counted by the driver itself.

The driver sees every query sent on a connection; the same
workload runs through a plain ``AsyncSession`` and a ``RoutingSession`` on
the same engines, and the difference is what routing_db adds.
"""

from __future__ import annotations

import contextlib
import re
import tempfile
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from typing import IO, Any

import pytest
from psycopg.pq import Trace
from sqlalchemy import event, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine

from routing_db import Router, current_causal_token, read_only, routing_sessionmaker
from routing_db.testing import PostgresCluster

from .models import Item

pytestmark = pytest.mark.usefixtures("clean")

ROUND_TRIP = re.compile(rb"^F\t\d+\t(?:Query|Sync)\b", re.MULTILINE)


class QueryCount:
    """Queries sent per engine, as the driver reports them.

    asyncpg: its query logger. psycopg: libpq's protocol trace, where each
    round trip ends in a simple ``Query`` or an extended-protocol ``Sync``.
    """

    def __init__(self, engines: dict[str, AsyncEngine]) -> None:
        self._counted: Counter[str] = Counter()
        self._traces: list[tuple[str, IO[bytes]]] = []
        self._traced: list[Any] = []
        self._files = contextlib.ExitStack()
        for name, engine in engines.items():

            def on_connect(
                dbapi_connection: Any, record: Any, name: str = name
            ) -> None:
                driver = dbapi_connection.driver_connection
                if hasattr(driver, "add_query_logger"):
                    driver.add_query_logger(
                        lambda query, name=name: self._counted.update([name])
                    )
                    return
                # Closed by close(), after libpq stops writing to it.
                trace = self._files.enter_context(tempfile.TemporaryFile())  # noqa: SIM115
                driver.pgconn.trace(trace.fileno())
                driver.pgconn.set_trace_flags(Trace.SUPPRESS_TIMESTAMPS)
                self._traces.append((name, trace))
                self._traced.append(driver.pgconn)

            event.listen(engine.sync_engine, "connect", on_connect)

    @property
    def sent(self) -> Counter[str]:
        counted = Counter(self._counted)
        for name, trace in self._traces:
            trace.seek(0)
            counted[name] += len(ROUND_TRIP.findall(trace.read()))
        return counted

    def close(self) -> None:
        """Stop tracing (libpq must not write to a closed file), close the files."""
        for pgconn in self._traced:
            with contextlib.suppress(Exception):
                pgconn.untrace()
        self._files.close()

    def clear(self) -> None:
        self._counted.clear()
        for _, trace in self._traces:
            trace.seek(0)
            trace.truncate()


@pytest.fixture
def counter() -> Iterator[Callable[[dict[str, AsyncEngine]], QueryCount]]:
    """Makes ``QueryCount``s, closed before the engines they watch are disposed."""
    made: list[QueryCount] = []

    def make(engines: dict[str, AsyncEngine]) -> QueryCount:
        made.append(QueryCount(engines))
        return made[-1]

    yield make
    for count in made:
        count.close()


@pytest.fixture
async def one_replica(cluster: PostgresCluster) -> AsyncIterator[Router]:
    router = Router.from_urls(cluster.writer_url, cluster.replica_urls[:1])
    try:
        yield router
    finally:
        await router.dispose()


async def test_one_extra_round_trip_per_write_transaction(
    one_replica: Router,
    cluster: PostgresCluster,
    counter: Callable[[dict[str, AsyncEngine]], QueryCount],
) -> None:
    # The baseline: an engine of the application's own, which the router
    # does not know (a plain session on the router's writer pays the same
    # round trip as a routing session: its commits record positions too).
    own = create_async_engine(cluster.writer_url)
    count = counter({"writer": one_replica.writer, "own": own})
    Session = routing_sessionmaker(one_replica)

    async def plain(n: int, engine: AsyncEngine) -> None:
        async with AsyncSession(engine) as session:
            session.add(Item(name=f"plain{n}"))
            await session.commit()

    async def routed(n: int) -> None:
        async with Session() as session:
            session.add(Item(name=f"routed{n}"))
            await session.commit()

    try:
        # Warm up: connection setup is not per transaction, and psycopg
        # prepares a statement (one more round trip) on its fifth use.
        for n in range(-6, 0):
            await plain(n, own)
            await plain(n, one_replica.writer)
            await routed(n)
        count.clear()
        for n in range(5):
            await plain(n, own)
        plain_sent = count.sent["own"]
        for n in range(5):
            await plain(n + 5, one_replica.writer)
        on_the_writer = count.sent["writer"]
        count.clear()
        for n in range(5):
            await routed(n)
    finally:
        await own.dispose()
    assert current_causal_token() is not None
    assert count.sent["writer"] - plain_sent == 5  # pg_current_wal_lsn(), once each
    assert on_the_writer - plain_sent == 5  # the same, without a routing session


async def test_no_extra_round_trip_per_read_when_caught_up(
    one_replica: Router,
    cluster: PostgresCluster,
    counter: Callable[[dict[str, AsyncEngine]], QueryCount],
) -> None:
    replica = one_replica.replicas[0]
    count = counter({"replica": replica})
    Session = routing_sessionmaker(one_replica)
    async with Session() as session:
        session.add(Item(name="seen"))
        await session.commit()
    await cluster.await_replicated()
    # One monitor round caches the replica's position; then no monitor
    # traffic, so only the reads are counted.
    await one_replica.start()
    await one_replica.stop()

    async def plain() -> None:
        async with AsyncSession(replica) as session:
            assert "seen" in set(await session.scalars(select(Item.name)))

    async def routed() -> None:
        async with Session() as session, read_only:
            assert "seen" in set(await session.scalars(select(Item.name)))

    for _ in range(6):  # warm up, as above
        await plain()
        await routed()
    count.clear()
    for _ in range(5):
        await plain()
    plain_sent = count.sent["replica"]
    count.clear()
    for _ in range(5):
        await routed()
    assert current_causal_token() is not None  # these reads carried a floor
    assert count.sent["replica"] == plain_sent
