"""Causal tokens across a failover: old ones never hang, new ones read their writes.

Replica 0 is stopped while the primary writes a lot (replica 1 replays it),
then the primary crashes and replica 0, which never saw those writes, is
promoted: the write's token lies beyond the new timeline, and replica 1 is
rewound onto it, behind the position it had replayed.
"""

from __future__ import annotations

import time

import pytest
from sqlalchemy import func, select, text

from routing_db import (
    Router,
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

pytestmark = pytest.mark.slow  # a failover with a rewind


async def write(Session: object, name: str, rows: int = 1) -> str:
    """Write ``rows`` items through the router; return the commit's token."""
    async with Session() as session:  # type: ignore[operator]
        await session.execute(
            text(
                "INSERT INTO items (name) "
                "SELECT :name || n FROM generate_series(1, :rows) AS n"
            ),
            {"name": name, "rows": rows},
        )
        await session.commit()
    token = current_causal_token()
    assert token is not None
    return token


async def count(Session: object, token: str, name: str) -> tuple[int, tuple[int, bool]]:
    """Items named ``name``* read under ``read_only`` with ``token``; and where."""
    async with causal_token(token), Session() as session, read_only:  # type: ignore[operator]
        seen = await session.scalar(
            select(func.count()).where(Item.name.startswith(name))
        )
        return int(seen or 0), await where(session)


@pytest.mark.usefixtures("clean")
async def test_tokens_across_a_failover(faults: PostgresCluster) -> None:
    cluster = faults
    new, other = cluster.replicas
    router = Router.from_cluster(
        cluster.urls, names=["old", "new", "other"], monitor_interval=0.1
    )
    Session = routing_sessionmaker(router)
    async with router:
        await cluster.astop_replica(0)
        # Much WAL that only `other` replays: its position runs far ahead
        # of where `new` stops.
        lost = await write(Session, "lost", rows=20000)
        await cluster.await_replicated([other])
        await until(lambda: router.status()[3]["replay_lsn"] is not None, 5)
        await cluster.acrash_primary()
        await cluster.astart_replica(0, wait_streaming=False)
        await cluster.apromote(0)
        await cluster.afollow(1, new_primary=0)  # rewound: it was ahead

        # A token of the old timeline, of a write the new primary never got:
        # served at once (by the writer, or by `other` once the new
        # timeline's positions pass it), neither hanging nor failing.
        started = time.monotonic()
        seen, (port, _) = await count(Session, lost, "lost")
        assert time.monotonic() - started < 5
        assert seen == 0  # the write was lost in the failover (async replication)
        assert port in (new.port, other.port)

        # A token of the new primary, with `other` (rewound, behind the
        # position it had replayed before) paused: read-your-writes holds.
        await until(lambda: router.status()[3]["state"] == "serving", 10)
        cluster.pause_replay(1)
        try:
            fresh = await write(Session, "fresh")
            seen, (port, standby) = await count(Session, fresh, "fresh")
            assert seen == 1
            assert (port, standby) == (new.port, False), router.status()
        finally:
            cluster.resume_replay(1)
        # Once it has replayed the write, `other` serves the token's reads.
        await cluster.await_replicated([other])
        await until(lambda: router.status()[3]["replay_lsn"] is not None, 5)
        seen, where_ = await count(Session, fresh, "fresh")
        assert (seen, where_) == (1, (other.port, True))


@pytest.mark.usefixtures("clean")
async def test_a_rewound_replica_is_not_trusted_with_its_old_position(
    faults: PostgresCluster,
    make_router: RouterMaker,
) -> None:
    """No monitor: only reads learn `other`'s position, and nothing but its
    restart (rewound onto the new timeline) says that position is gone."""
    cluster = faults
    new, other = cluster.replicas
    # No time window after a write: only positions decide where reads go.
    router = make_router.keep(
        Router.from_cluster(
            cluster.urls, names=["old", "new", "other"], sticky_seconds=0
        )
    )
    Session = routing_sessionmaker(router)
    await cluster.astop_replica(0)
    lost = await write(Session, "lost", rows=20000)
    # Move the old timeline's position far ahead (a WAL segment each),
    # beyond where the new primary's writes will be for a while.
    for _ in range(8):
        cluster.sql(
            cluster.primary,
            "INSERT INTO items (name) VALUES ('switch'); SELECT pg_switch_wal()",
        )
    await cluster.await_replicated([other])
    await cluster.acrash_primary()
    await cluster.astart_replica(0, wait_streaming=False)
    await cluster.apromote(0)
    await write(Session, "elected")  # the router finds the new primary
    # `other` is still on the old timeline, past the fork: a read of the
    # lost write's token learns (and caches) that position there.
    seen, where_ = await count(Session, lost, "lost")
    assert (seen, where_) == (20000, (other.port, True))

    await cluster.afollow(1, new_primary=0)  # rewound, restarted
    cluster.pause_replay(1)
    try:
        # The new primary's positions are below the cached one.
        fresh = await write(Session, "fresh")
        high, low = fresh.removeprefix("pg:").split("~")[0].split("/")
        cached = router.status()[3]["replay_lsn"]
        assert (int(high, 16) << 32) + int(low, 16) < cached  # looks replayed
        seen, where_ = await count(Session, fresh, "fresh")
        assert (seen, where_) == (1, (new.port, False))
    finally:
        cluster.resume_replay(1)
