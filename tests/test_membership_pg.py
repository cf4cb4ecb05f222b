"""Replicas added and drained while reads run: no read fails because of it."""

from __future__ import annotations

import asyncio
import collections
import logging

import pytest

from routing_db import ConfigurationError, Router, read_only, routing_sessionmaker
from routing_db.testing import PostgresCluster

from .conftest import where
from .waiting import until

pytestmark = pytest.mark.slow  # a new standby is a base backup


async def test_a_replica_added_and_one_drained_under_load(
    faults: PostgresCluster, caplog: pytest.LogCaptureFixture
) -> None:
    cluster = faults
    router = Router.from_urls(
        cluster.writer_url, cluster.replica_urls[:1], monitor_interval=0.1
    )
    Session = routing_sessionmaker(router)
    new = await cluster.aadd_standby()
    served: collections.Counter[int] = collections.Counter()
    errors: list[BaseException] = []
    stop = asyncio.Event()

    async def reader() -> None:
        while not stop.is_set():
            try:
                async with Session() as session, read_only:
                    port, standby = await where(session)
                    assert standby
                    await asyncio.sleep(0.005)  # a transaction still open
                    served[port] += 1
            except Exception as exc:
                errors.append(exc)

    async with router:
        readers = [asyncio.create_task(reader()) for _ in range(10)]
        try:
            name = router.add_replica(new.url_for(cluster.driver), name="added")
            assert name == "added"
            await until(lambda: served[new.port] > 0, 5)  # within an interval

            old = router.status()[1]["name"]
            with caplog.at_level(logging.WARNING, logger="routing_db"):
                await router.remove_replica(old, drain_timeout=10)
            assert "connections in use" not in caplog.text  # all drained in time
            assert [row["name"] for row in router.status()[1:]] == ["added"]
            served.clear()
            await until(lambda: served.total() >= 50, 10)
            assert set(served) == {new.port}
        finally:
            stop.set()
            await asyncio.gather(*readers)
    assert errors == []


async def test_membership_changes_are_checked(cluster: PostgresCluster) -> None:
    router = Router.from_urls(cluster.writer_url, cluster.replica_urls)
    try:
        with pytest.raises(ConfigurationError, match="already has an engine named"):
            router.add_replica(cluster.replica_urls[0])
        with pytest.raises(ConfigurationError, match="no replica named"):
            await router.remove_replica("nowhere")
        with pytest.raises(ConfigurationError, match="not a valid database URL"):
            router.add_replica("not a url")
    finally:
        await router.dispose()
