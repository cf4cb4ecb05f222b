"""A check the replica_read_timeout tests share across backends."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from sqlalchemy import TextClause

from routing_db import ReplicaReadTimeout, read_only

from .waiting import until


async def stopped_on_the_server(
    Session: Any,
    *,
    pin: Callable[[Any], Awaitable[Any]],
    slow: TextClause,
    running: Callable[[], int],
) -> None:
    """``slow``, a later statement of a read, raises ``ReplicaReadTimeout``,
    and the server stops running it (``running()`` counts it there)."""
    async with Session() as session, read_only:
        await pin(session)  # the replica: the next is a later statement
        with pytest.raises(ReplicaReadTimeout):
            await session.execute(slow)
    await until(lambda: running() == 0, 5.0)


def pg_sleeping(cluster: Any, node: Any) -> Callable[[], int]:
    """How many ``pg_sleep(30)`` statements run on ``node`` (PostgreSQL)."""

    def sleeping() -> int:
        return int(
            cluster.sql(
                node,
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE query LIKE '%pg_sleep(30)%' AND pid <> pg_backend_pid()",
            )
        )

    return sleeping
