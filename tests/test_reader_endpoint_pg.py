"""One replica URL that reaches several standbys (a load-balanced reader
endpoint): read-your-writes and "no failed reads" hold exactly as with one URL
per server (issue J, section 1)."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from routing_db import Router, read_only, routing_sessionmaker
from routing_db.testing import Balancer, PostgresCluster

from .conftest import where
from .errors import allowed
from .read_back import read_back

pytestmark = pytest.mark.usefixtures("clean")


@pytest.fixture
def endpoint(faults: PostgresCluster) -> Iterator[str]:
    """A reader endpoint in front of both standbys: each new connection goes
    to the next one."""
    with Balancer([node.port for node in faults.replicas]) as balancer:
        yield balancer.url(faults.replica_urls[0])


@pytest.mark.parametrize("wait", [None, 0.0])
async def test_read_your_writes_through_a_reader_endpoint(
    faults: PostgresCluster, endpoint: str, ports: dict[str, Any], wait: float | None
) -> None:
    # Replay paused on one of the two standbys behind the endpoint: half of
    # the endpoint's connections reach a server that will not see the writes.
    faults.pause_replay(1)
    paused = int(faults.sql(faults.replicas[1], "SELECT inet_server_port()"))
    router = Router.from_urls(
        faults.writer_url, [endpoint], pool_size=4, causal_wait_timeout=wait
    )
    Session = routing_sessionmaker(router, expire_on_commit=False)

    async def port(session: AsyncSession) -> int:
        return (await where(session))[0]

    async with router:
        seen = await read_back(Session, port, users=8, writes=15)
    assert all(allowed(error) for error in seen.errors), seen.errors[:3]
    assert not seen.errors, seen.errors[:3]
    assert not seen.stale, seen.stale[:5]
    assert len(seen.served) == 120
    served = Counter(seen.served)
    # The paused standby served nothing it could not: never these reads.
    assert paused not in served
    # And the standby that replays took its share (not everything fell back).
    assert served.keys() - {ports["writer"]}, served


async def test_reads_through_a_reader_endpoint_never_fail(
    faults: PostgresCluster, endpoint: str
) -> None:
    """Standbys behind one URL started at different times (and one of them
    restarted meanwhile): no read fails, and only allowed errors could."""
    router = Router.from_urls(faults.writer_url, [endpoint], pool_size=2)
    Session = routing_sessionmaker(router)
    errors: list[BaseException] = []
    served: Counter[bool] = Counter()

    async def reads(count: int) -> None:
        for _ in range(count):
            try:
                async with Session() as session, read_only:
                    _, standby = await where(session)
                served[standby] += 1
            except Exception as exc:  # counted: the test wants none
                errors.append(exc)

    async with router:
        await asyncio.gather(*(reads(20) for _ in range(4)))
        await asyncio.to_thread(faults.stop_replica, 0)
        await asyncio.to_thread(faults.start_replica, 0)
        await router.poll()
        await asyncio.gather(*(reads(20) for _ in range(4)))
    assert all(allowed(error) for error in errors), errors[:3]
    assert not errors, errors[:3]
    assert served[True] > 0


async def test_a_writer_url_that_also_reaches_a_standby(
    faults: PostgresCluster, ports: dict[str, Any]
) -> None:
    """The writer's URL is a proxy that sends some new connections to a
    standby (HAProxy before its checks settled, a DNS name still moving): a
    writer connection that reached a standby is refused, so no write fails
    as read-only and no read served by the writer is stale."""
    faults.pause_replay(1)  # the one replica left for reads replays nothing
    with Balancer([faults.primary.port, faults.replicas[0].port]) as balancer:
        router = Router.from_urls(
            balancer.url(faults.writer_url), faults.replica_urls[1:], pool_size=4
        )
        Session = routing_sessionmaker(router, expire_on_commit=False)

        async def port(session: AsyncSession) -> int:
            return (await where(session))[0]

        async with router:
            seen = await read_back(Session, port, users=4, writes=10)
        assert balancer.connections > 2  # the standby was reached, and refused
    assert not seen.errors, seen.errors[:3]
    assert not seen.stale, seen.stale[:5]
    assert set(seen.served) == {ports["writer"]}  # the paused replica: never
