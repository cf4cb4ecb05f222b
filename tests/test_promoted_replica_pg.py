"""A replica that is promoted leaves the read set, and comes back as a standby.

Real promotions (``pg_ctl promote``) of a standby while the router runs; which
server served each read is asked of the server (``inet_server_port()``).
"""

from __future__ import annotations

from typing import Any

import pytest

from routing_db import Router, RoutingListener, read_only, routing_sessionmaker
from routing_db.testing import PostgresCluster

from .conftest import where
from .routers import RouterMaker
from .waiting import until

pytestmark = pytest.mark.slow  # promotions and rebuilds take seconds


class RoleLog(RoutingListener):
    """Records the router's role changes."""

    def __init__(self) -> None:
        self.changes: list[tuple[str, str, str]] = []

    def role_changed(self, engine: str, old: str, new: str) -> None:
        self.changes.append((engine, old, new))


async def _read_port(Session: Any) -> int:
    async with Session() as session, read_only:
        port, standby = await where(session)
        assert standby, "a read_only read was served by a server taking writes"
        return port


async def test_a_promoted_replica_leaves_the_read_set_and_comes_back(
    faults: PostgresCluster,
) -> None:
    cluster = faults
    promoted, other = (node.port for node in cluster.replicas)
    router = Router.from_urls(
        cluster.writer_url, cluster.replica_urls, monitor_interval=0.1
    )
    roles = RoleLog()
    router.add_listener(roles)
    Session = routing_sessionmaker(router)
    name = router.status()[1]["name"]
    async with router:
        await cluster.apromote(0)
        # Reads never fail and never land on the promoted node once the
        # monitor has seen it (its standby check runs in the same query).
        await until(lambda: router.status()[1]["role"] == "unknown", 5)
        assert roles.changes == [(name, "replica", "unknown")]
        row = router.status()[1]
        assert (row["state"], row["eligible"]) == ("ejected", False)
        ports = [await _read_port(Session) for _ in range(20)]
        assert set(ports) == {other}

        await cluster.aheal()  # a standby of the primary again
        await until(lambda: router.status()[1]["role"] == "replica", 10)
        assert roles.changes[-1] == (name, "unknown", "replica")

        async def served_by_it_again() -> bool:
            return await _read_port(Session) == promoted

        await until(served_by_it_again, 10)


async def test_a_new_connection_to_a_promoted_replica_is_routed_around(
    faults: PostgresCluster,
    make_router: RouterMaker,
) -> None:
    cluster = faults
    other = cluster.replicas[1].port
    # No monitor: only the replicas' own connections say what they are.
    router = make_router(cluster.writer_url, cluster.replica_urls)
    Session = routing_sessionmaker(router)
    seen: set[int] = set()

    async def both_seen() -> bool:
        seen.add(await _read_port(Session))
        return len(seen) == 2

    await until(both_seen, 10)
    await cluster.apromote(0)
    await router.replicas[0].dispose()  # its next checkout connects anew
    ports = [await _read_port(Session) for _ in range(20)]
    assert set(ports) == {other}
    assert router.status()[1]["role"] == "unknown"
