"""One replica URL that reaches several standbys (a load-balanced reader
endpoint): read-your-writes and "no failed reads" hold exactly as with one URL
per server (issue J, section 1)."""

from __future__ import annotations

import asyncio
import contextvars
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import func, select

from routing_db import (
    Router,
    RoutingDBError,
    causal_token,
    current_causal_token,
    read_only,
    routing_sessionmaker,
)
from routing_db.testing import Balancer, PostgresCluster

from .conftest import where
from .models import Item

pytestmark = pytest.mark.usefixtures("clean")


@pytest.fixture
def endpoint(faults: PostgresCluster) -> Iterator[str]:
    """A reader endpoint in front of both standbys: each new connection goes
    to the next one."""
    with Balancer([node.port for node in faults.replicas]) as balancer:
        yield balancer.url(faults.replica_urls[0])


def allowed(error: BaseException) -> bool:
    """What may reach the application: routing_db's errors, SQLAlchemy's and
    the driver's (none are expected in these tests)."""
    module = type(error).__module__
    return isinstance(error, RoutingDBError) or module.split(".")[0] in (
        "sqlalchemy",
        "asyncpg",
        "psycopg",
    )


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
    served: Counter[int] = Counter()
    stale: list[str] = []
    errors: list[BaseException] = []

    async def user(n: int) -> None:
        for i in range(15):
            name = f"u{n}-{i}"
            async with Session() as session:
                session.add(Item(name=name))
                await session.commit()
            token = current_causal_token()
            assert token is not None

            async def next_request(token: str = token, name: str = name) -> None:
                with causal_token(token):
                    async with Session() as session, read_only:
                        found = await session.scalar(
                            select(func.count()).where(Item.name == name)
                        )
                        port, _ = await where(session)
                served[port] += 1
                if found != 1:
                    stale.append(f"{name} read on port {port}")

            try:
                await asyncio.create_task(next_request(), context=contextvars.Context())
            except Exception as exc:  # counted: the test wants none
                errors.append(exc)

    async with router:
        await asyncio.gather(*(user(n) for n in range(8)))
    assert not errors, errors[:3]
    assert not stale, stale[:5]
    assert sum(served.values()) == 120
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
