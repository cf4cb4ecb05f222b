"""A static router whose writer URL is a PgBouncer that a failover tool repoints.

The old primary crashes, replica 0 is promoted and the old primary comes back
as its standby while PgBouncer still points at it: writes are refused as
read-only there, wait (never ``ReadOnlyViolation``), and resume once
PgBouncer's ``primary`` entry is switched to the new primary and reloaded.
"""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import text

from routing_db import (
    NoWriterAvailable,
    ReadOnlyViolation,
    Router,
    routing_sessionmaker,
)
from routing_db.testing import PgBouncer, PostgresCluster

from .waiting import until

pytestmark = pytest.mark.slow  # a failover and a rewind

INSERT = text("INSERT INTO items (name) VALUES (:name) RETURNING inet_server_port()")
BACKENDS = (
    "SELECT count(*) FROM pg_stat_activity "
    "WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()"
)


@pytest.mark.usefixtures("clean", "pgbouncer")  # "pgbouncer": it is installed
async def test_writes_follow_pgbouncer_to_the_new_primary(
    faults: PostgresCluster,
) -> None:
    cluster = faults
    old, new = cluster.primary, cluster.replicas[0]
    bouncer = PgBouncer.start({"primary": old}, pool_size=4)
    router = Router.from_urls(
        bouncer.url("primary", cluster.driver),
        cluster.replica_urls[1:],
        pgbouncer=True,
        writer_wait_timeout=30,
    )
    Session = routing_sessionmaker(router)

    async def insert(name: str) -> int:
        async with Session() as session:
            port = (await session.execute(INSERT, {"name": name})).scalar_one()
            await session.commit()
            return int(port)

    try:
        assert await insert("before") == old.port
        await cluster.await_replicated()  # not lost in the crash
        await cluster.acrash_primary()
        await cluster.apromote(0)
        await cluster.arebuild_as_standby(old, of=0)  # PgBouncer still points here

        write = asyncio.create_task(insert("after"))
        await until(lambda: not router.topology.writer_ok, 10)  # refused, waiting
        assert not write.done()
        bouncer.retarget("primary", new)
        assert await asyncio.wait_for(write, 30) == new.port
        assert router.topology.writer_ok
        # PgBouncer closes its server connections to the old primary.
        await until(lambda: cluster.sql(old, BACKENDS) == "0", 10)
        names = cluster.sql(new, "SELECT string_agg(name, ',' ORDER BY id) FROM items")
        assert names == "before,after"
    except (ReadOnlyViolation, NoWriterAvailable) as exc:
        pytest.fail(f"the write did not wait for the new primary: {exc!r}")
    finally:
        await router.dispose()
        bouncer.stop()
