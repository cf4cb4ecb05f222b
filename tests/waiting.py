"""Waiting on a condition with a deadline, instead of sleeping and hoping."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

__all__ = ["backend_waits_for_a_lock", "until"]


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


async def backend_waits_for_a_lock(engine: AsyncEngine, pid: int) -> bool:
    """Is server backend ``pid`` blocked on a lock (seen in pg_stat_activity)?"""
    async with engine.connect() as connection:
        waiting = await connection.scalar(
            text(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE pid = :pid AND wait_event_type = 'Lock'"
            ),
            {"pid": pid},
        )
    return bool(waiting)
