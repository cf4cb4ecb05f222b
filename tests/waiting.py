"""Waiting on a condition with a deadline, instead of sleeping and hoping."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

__all__ = ["BACKEND_ID", "backend_waits_for_a_lock", "until", "until_sync"]


async def until(
    condition: Callable[[], bool | Awaitable[bool]], seconds: float = 10.0
) -> None:
    """Return once ``condition()`` is true; fail after ``seconds``."""
    deadline = time.monotonic() + seconds
    while True:
        result = condition()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.005)


def until_sync(condition: Callable[[], bool], seconds: float = 10.0) -> None:
    """``until`` for threads: return once ``condition()`` is true."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.005)


BACKEND_ID = {
    "postgresql": text("SELECT pg_backend_pid()"),
    "mysql": text("SELECT CONNECTION_ID()"),
}
_WAITS = {
    "postgresql": text(
        "SELECT count(*) FROM pg_stat_activity"
        " WHERE pid = :pid AND wait_event_type = 'Lock'"
    ),
    # Without the PROCESS privilege an account sees only its own threads,
    # and not InnoDB's lock waits: a statement still running is the signal.
    "mysql": text(
        "SELECT count(*) FROM information_schema.PROCESSLIST"
        " WHERE ID = :pid AND COMMAND = 'Query'"
    ),
}


async def backend_waits_for_a_lock(engine: AsyncEngine, pid: int) -> bool:
    """Is server backend ``pid`` (see ``BACKEND_ID``) blocked on a lock?

    (MariaDB: still running a statement.)
    """
    dialect = "mysql" if engine.dialect.name == "mariadb" else engine.dialect.name
    async with engine.connect() as connection:
        waiting = await connection.scalar(_WAITS[dialect], {"pid": pid})
    return bool(waiting)
