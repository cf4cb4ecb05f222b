"""``Router.from_cluster``: the writer is found among the nodes, on real servers."""

from __future__ import annotations

import asyncio
import collections
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from routing_db import (
    ConfigurationError,
    NoWriterAvailable,
    Router,
    read_only,
    routing_sessionmaker,
)
from routing_db.testing import PostgresCluster

from .conftest import where
from .models import Item
from .waiting import until

NAMES = ["r0", "r1", "primary"]


def cluster_router(cluster: PostgresCluster, **options: Any) -> Router:
    """The nodes listed with the primary last: nothing says which it is."""
    urls = [*cluster.replica_urls, cluster.writer_url]
    return Router.from_cluster(urls, names=NAMES, **options)


@pytest.mark.usefixtures("clean")
async def test_the_writer_is_found_among_the_nodes(cluster: PostgresCluster) -> None:
    router = cluster_router(cluster)
    Session = routing_sessionmaker(router)
    replica_ports = {node.port for node in cluster.replicas}
    try:
        # Never started: the first write asks every node who takes writes.
        async with Session() as session:
            session.add(Item(name="found"))
            await session.flush()
            assert await where(session) == (cluster.primary.port, False)
            await session.commit()
        # Else read-your-writes keeps this context's reads on the writer until
        # a replica has replayed the commit (CI saw it).
        await cluster.await_replicated()
        for _ in range(4):
            async with Session() as session, read_only:
                port, standby = await where(session)
            assert standby and port in replica_ports
        await router.poll()
        roles = {row["name"]: (row["role"], row["state"]) for row in router.status()}
        assert roles == {
            "writer": ("writer", "serving"),
            "r0": ("replica", "serving"),
            "r1": ("replica", "serving"),
            "primary": ("writer", "serving"),
        }
        assert router.status()[0]["node"] == "primary"
        assert cluster.sql(cluster.primary, "SELECT name FROM items") == "found"
    finally:
        await router.dispose()


@pytest.mark.slow  # a promotion and the healing take seconds
@pytest.mark.usefixtures("clean")
async def test_two_primaries_get_no_writes(faults: PostgresCluster) -> None:
    cluster = faults
    router = cluster_router(cluster, writer_wait_timeout=0.5)
    Session = routing_sessionmaker(router)
    try:
        async with router:
            await cluster.apromote(1)  # while the primary still runs
            await router.poll()
            with pytest.raises(
                NoWriterAvailable, match="r1 and primary take writes"
            ) as caught:
                async with Session() as session:
                    await session.execute(
                        text("INSERT INTO items (name) VALUES ('split')")
                    )
                    await session.commit()
            assert "split brain" in str(caught.value)
            with pytest.raises(NoWriterAvailable):
                async with Session() as session:  # a flush is refused the same way
                    session.add(Item(name="split too"))
                    await session.commit()
            assert router.status()[0]["role"] == "unknown"
            async with Session() as session, read_only:  # r0 still serves reads
                assert await where(session) == (cluster.replicas[0].port, True)
        for node in (cluster.primary, cluster.replicas[1]):
            assert cluster.sql(node, "SELECT count(*) FROM items") == "0"
    finally:
        await router.dispose()


@pytest.mark.parametrize(
    ("urls", "error"),
    [
        ([], "non-empty list"),
        ("postgresql+asyncpg://h/db", "non-empty list"),
        (["sqlite+aiosqlite:///x.db"], "SQLite"),
        (["postgresql+asyncpg://a/db", "mysql+aiomysql://b/db"], "mix"),
        (["postgresql+asyncpg://a:1/db", "postgresql+asyncpg://a:1/db"], "twice"),
        (["postgresql+asyncpg://u:sekrit@a/db", "nonsense"], "cluster_urls\\[1\\]"),
    ],
)
def test_cluster_urls_are_checked(urls: list[str], error: str) -> None:
    with pytest.raises(ConfigurationError, match=error) as caught:
        Router.from_cluster(urls)
    assert "sekrit" not in str(caught.value)


def test_the_writer_of_a_cluster_takes_no_reads() -> None:
    with pytest.raises(ConfigurationError, match="writer_read_weight"):
        Router.from_cluster(["postgresql+asyncpg://a/db"], writer_read_weight=1)


@pytest.mark.slow  # a failover and the healing take seconds
@pytest.mark.usefixtures("clean")
async def test_a_write_waits_for_the_next_primary(faults: PostgresCluster) -> None:
    """No monitor runs: the write that finds the writer gone asks every node."""
    cluster = faults
    router = cluster_router(cluster, writer_wait_timeout=20)
    Session = routing_sessionmaker(router)
    try:
        async with Session() as session:
            session.add(Item(name="before"))
            await session.commit()
        await cluster.acrash_primary()

        async def failover_later() -> None:
            # As a failover manager decides: seconds after the crash.
            await asyncio.sleep(3)
            await cluster.apromote(0)

        failover = asyncio.create_task(failover_later())
        async with Session() as session:
            session.add(Item(name="after"))
            await session.flush()
            assert await where(session) == (cluster.replicas[0].port, False)
            await session.commit()
        await failover
        assert failover.done()
        names = cluster.sql(
            cluster.replicas[0], "SELECT string_agg(name, ',') FROM items"
        )
        assert sorted(names.split(",")) == ["after", "before"]
        assert {row["name"]: row["role"] for row in router.status()}["r0"] == "writer"
    finally:
        await router.dispose()


@pytest.mark.slow  # a new standby is a base backup
async def test_nodes_added_and_removed_under_load(faults: PostgresCluster) -> None:
    cluster = faults
    router = cluster_router(cluster, monitor_interval=0.1)
    Session = routing_sessionmaker(router)
    added = await cluster.aadd_standby()
    served: collections.Counter[int] = collections.Counter()
    errors: list[BaseException] = []
    stop = asyncio.Event()

    async def reader() -> None:
        while not stop.is_set():
            try:
                async with Session() as session, read_only:
                    port, standby = await where(session)
                    assert standby
                    served[port] += 1
            except Exception as exc:
                errors.append(exc)

    async with router:
        readers = [asyncio.create_task(reader()) for _ in range(10)]
        try:
            with pytest.raises(ConfigurationError, match="add_node"):
                router.add_replica(added.url_for(cluster.driver))
            assert router.add_node(added.url_for(cluster.driver), name="added")
            await until(lambda: served[added.port] > 0, 5)
            roles = {row["name"]: row["role"] for row in router.status()}
            assert roles["added"] == "replica"

            with pytest.raises(ConfigurationError, match="is the writer"):
                await router.remove_node("primary")
            await router.remove_node("r0", drain_timeout=10)
            assert [row["name"] for row in router.status()] == [
                "writer",
                "r1",
                "primary",
                "added",
            ]
            served.clear()
            await until(lambda: served.total() >= 50, 10)
            assert set(served) == {cluster.replicas[1].port, added.port}
        finally:
            stop.set()
            await asyncio.gather(*readers)
    assert errors == []


@pytest.mark.slow  # a failover, a restart in recovery and a rewind take seconds
@pytest.mark.usefixtures("clean")
@pytest.mark.parametrize("role", ["postgres", "app_former"])
async def test_a_demoted_primary_not_yet_rewound_serves_no_reads(
    faults: PostgresCluster, role: str
) -> None:
    """The old primary restarted in recovery before it is rewound (as Patroni
    does) holds a write the cluster threw away and cannot follow the new
    timeline: it serves no reads until it is rewound. A superuser sees its WAL
    receiver's timeline; a role without ``pg_read_all_stats`` does not, and
    is kept safe by the node's past as a primary."""
    cluster = faults
    old, other = cluster.primary, cluster.replicas[1]
    cluster.sql(
        old,
        "DO $$ BEGIN CREATE ROLE app_former LOGIN PASSWORD 'app-pw'; "
        "EXCEPTION WHEN duplicate_object THEN NULL; END $$; "
        "GRANT SELECT ON items TO app_former",
    )
    await cluster.await_replicated()
    urls = [
        url.replace("postgres@", f"{role}:app-pw@", 1)
        for url in (*cluster.replica_urls, cluster.writer_url)
    ]
    router = Router.from_cluster(urls, names=NAMES, monitor_interval=0.1)
    Session = routing_sessionmaker(router)
    lost = text("SELECT inet_server_port(), count(*) FROM items WHERE name = 'lost'")

    async def served() -> collections.Counter[tuple[int, int]]:
        counts: collections.Counter[tuple[int, int]] = collections.Counter()
        for _ in range(40):
            async with Session() as session, read_only:
                port, rows = (await session.execute(lost)).one()
            counts[int(port), int(rows)] += 1
        return counts

    async with router:
        await router.poll()
        assert router.status()[0]["node"] == "primary"
        # A write the standbys never receive, then a failover to r0.
        cluster.stop_streaming(0)
        cluster.stop_streaming(1)
        cluster.sql(old, "INSERT INTO items (name) VALUES ('lost')")
        cluster.crash_primary()
        await cluster.apromote(0)
        cluster.follow(1, new_primary=0)
        await until(lambda: router.status()[0]["node"] == "r0", 10)
        # The writer's row names where its connections go now.
        assert f":{make_url(urls[0]).port}/" in router.status()[0]["url"]
        cluster.restart_in_recovery(old, of=0)
        assert cluster.sql(old, "SELECT count(*) FROM items WHERE name = 'lost'") == "1"

        async def asked_again() -> bool:  # the restart broke its connections
            await router.poll()
            roles = {row["name"]: str(row["role"]) for row in router.status()}
            return roles["primary"] == "replica"

        await until(asked_again, 10)
        assert await served() == {(other.port, 0): 40}

        cluster.rebuild_as_standby(old, of=0)

        async def serves_again() -> bool:
            return (old.port, 0) in await served()

        await until(serves_again, 20)
