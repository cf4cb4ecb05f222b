"""Reads the standby cancels: long replica reads while the primary updates and
vacuums rows, on a standby that waits only 100 ms for them
(``max_standby_streaming_delay``, ``hot_standby_feedback`` off)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest
import tenacity
from prometheus_client import CollectorRegistry
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from routing_db import RetryPolicy, Router, read_only, routing_sessionmaker
from routing_db import run_unit_of_work as run
from routing_db.metrics import register_metrics
from routing_db.testing import PostgresCluster

pytestmark = pytest.mark.slow  # seconds of conflicts, on the real clock

LONG_READ = text("SELECT inet_server_port() FROM pg_sleep(0.4)")
# Enough attempts that a later statement conflicted again and again still
# ends; no backoff.
RETRY = RetryPolicy(attempts=20, wait=tenacity.wait_none())


@pytest.fixture
def conflicting(faults: PostgresCluster) -> Iterator[PostgresCluster]:
    """Replica 0 cancels a read that holds up replay for more than 100 ms."""
    node = faults.replicas[0]
    faults.sql(node, "ALTER SYSTEM SET max_standby_streaming_delay = '100ms'")
    faults.sql(node, "ALTER SYSTEM SET hot_standby_feedback = off")
    faults.sql(node, "SELECT pg_reload_conf()")
    try:
        yield faults
    finally:
        faults.sql(node, "ALTER SYSTEM RESET max_standby_streaming_delay")
        faults.sql(node, "ALTER SYSTEM RESET hot_standby_feedback")
        faults.sql(node, "SELECT pg_reload_conf()")


@pytest.mark.usefixtures("clean")
async def test_reads_cancelled_by_the_standby_are_rerun(
    conflicting: PostgresCluster,
) -> None:
    cluster = conflicting
    router = Router.from_urls(cluster.writer_url, cluster.replica_urls, retry=RETRY)
    registry = CollectorRegistry()
    register_metrics(router, registry)
    Session = routing_sessionmaker(router)
    errors: list[BaseException] = []
    later_reruns = [0]
    stop = asyncio.Event()

    def first_statement_reruns() -> float:
        labels = {"kind": "recovery_conflict", "outcome": "succeeded"}
        value = registry.get_sample_value("routing_db_retries_total", labels)
        return value or 0.0

    async def first_statement_reads() -> None:
        while not stop.is_set():
            try:
                async with Session() as session, read_only:
                    await session.execute(LONG_READ)
            except Exception as exc:  # counted: the test wants none
                errors.append(exc)

    async def later_statement_reads() -> None:
        attempts = 0

        async def body(session: AsyncSession) -> None:
            nonlocal attempts
            attempts += 1
            await session.execute(text("SELECT 1"))  # pins the replica
            await session.execute(LONG_READ)

        while not stop.is_set():
            attempts = 0
            try:
                with read_only:
                    await run(Session, body)
            except Exception as exc:
                errors.append(exc)
            later_reruns[0] += max(0, attempts - 1)

    async def update_and_vacuum() -> None:
        # Removes row versions the standby's running reads may still see.
        while not stop.is_set():
            for sql in (
                "INSERT INTO items (name) VALUES ('dead')",
                "DELETE FROM items",
                "VACUUM items",
            ):
                await asyncio.to_thread(cluster.sql, cluster.primary, sql)

    tasks = [asyncio.create_task(update_and_vacuum())]
    tasks += [asyncio.create_task(first_statement_reads()) for _ in range(3)]
    tasks += [asyncio.create_task(later_statement_reads()) for _ in range(3)]
    deadline = time.monotonic() + 60
    try:
        while not (first_statement_reruns() >= 3 and later_reruns[0] >= 3):
            assert time.monotonic() < deadline, "too few conflicts in 60 s"
            await asyncio.sleep(0.1)
    finally:
        stop.set()
        await asyncio.gather(*tasks)
        await router.dispose()
    assert errors == []
    # A conflict is not a failure of the replica: it stays in service.
    assert router.status()[1]["ejected"] is False
