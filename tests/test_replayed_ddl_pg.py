"""DDL replayed from the primary under replicas that serve the same ORM query.

``ALTER ... TYPE`` changes the result type of a statement the replicas'
connections have prepared (asyncpg prepares every statement): the standby
then refuses it ("cached plan must not change result type"). ``ADD COLUMN``
in between changes the table under the same prepared statements.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy import select
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from routing_db import Router, read_only, routing_sessionmaker
from routing_db.metrics import register_metrics
from routing_db.testing import PostgresCluster

from .waiting import until

CHANGES = 20
READERS = 8
TABLE = "ddl_probe"


class _Base(DeclarativeBase):
    pass


class Probe(_Base):
    __tablename__ = TABLE
    id: Mapped[int] = mapped_column(primary_key=True)
    n: Mapped[int]


def ddl(change: int) -> str:
    """Even changes flip ``n``'s type, odd ones add a column."""
    if change % 2:
        return f"ALTER TABLE {TABLE} ADD COLUMN extra_{change} int DEFAULT {change}"
    kind = "bigint" if change % 4 == 0 else "integer"
    return f"ALTER TABLE {TABLE} ALTER COLUMN n TYPE {kind}"


@pytest.fixture
def probe_table(cluster: PostgresCluster) -> Iterator[None]:
    cluster.sql(
        cluster.primary,
        f"DROP TABLE IF EXISTS {TABLE}; CREATE TABLE {TABLE} (id int PRIMARY KEY,"
        f" n int); INSERT INTO {TABLE} SELECT g, g FROM generate_series(1, 10) g",
    )
    cluster.wait_replicated()
    try:
        yield
    finally:
        cluster.sql(cluster.primary, f"DROP TABLE IF EXISTS {TABLE}")


@pytest.mark.usefixtures("probe_table")
async def test_reads_survive_ddl_replayed_under_them(cluster: PostgresCluster) -> None:
    query = select(Probe).order_by(Probe.id)
    router = Router.from_urls(cluster.writer_url, cluster.replica_urls)
    registry = CollectorRegistry()
    register_metrics(router, registry)
    Session = routing_sessionmaker(router)
    reads, errors, stop = [0], [], asyncio.Event()

    async def read() -> None:
        while not stop.is_set():
            try:
                async with Session() as session, read_only:
                    rows = (await session.scalars(query)).all()
            except Exception as exc:  # counted: the test wants none
                errors.append(exc)
                continue
            assert [row.n for row in rows] == list(range(1, 11))
            reads[0] += 1

    readers = [asyncio.create_task(read()) for _ in range(READERS)]
    try:
        for change in range(CHANGES):
            # Every connection has run (and prepared) the query by now.
            target = reads[0] + 20 * READERS
            await until(lambda: reads[0] >= target, 30)  # noqa: B023
            await asyncio.to_thread(cluster.sql, cluster.primary, ddl(change))
            await cluster.await_replicated()
    finally:
        stop.set()
        await asyncio.gather(*readers)
        # Read while the router is open: its metrics leave with it.
        rerun = registry.get_sample_value(
            "routing_db_retries_total", {"kind": "stale_plan", "outcome": "succeeded"}
        )
        await router.dispose()
    assert errors == []
    if cluster.driver == "asyncpg":  # the DDL did reach prepared statements
        assert rerun is not None and rerun >= 1
    else:
        # psycopg forgets its prepared statements at each ROLLBACK, which
        # ends every replica transaction: none of them goes stale.
        assert rerun is None
