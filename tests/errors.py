"""Real errors, captured from real servers, for the classification tests."""

from __future__ import annotations

import asyncio
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from routing_db import RoutingDBError

from .waiting import BACKEND_ID, backend_waits_for_a_lock, until

__all__ = ["allowed", "capture", "deadlock"]

# The drivers whose errors may pass through to an application unchanged.
_DRIVERS = ("sqlalchemy", "asyncpg", "psycopg", "psycopg2", "aiomysql", "asyncmy")


def allowed(error: BaseException) -> bool:
    """May ``error`` reach an application? routing_db's own errors (every one
    a ``RoutingDBError``), SQLAlchemy's and the drivers'; nothing private and
    foreign, nothing of the standard library's raised by routing_db."""
    if isinstance(error, RoutingDBError):
        return True
    if isinstance(error, OSError):
        # A driver's connection failure as the driver raised it: asyncpg
        # raises the built-in ConnectionError when a proxy closes a
        # connection it is opening, and SQLAlchemy passes it on.
        return True
    return type(error).__module__.split(".")[0] in _DRIVERS


async def capture(coro: Any) -> BaseException:
    """The exception ``coro`` raises (it must raise one)."""
    try:
        await coro
    except BaseException as exc:
        return exc
    raise AssertionError("expected an error")


async def deadlock(engine: AsyncEngine, first: int, second: int) -> BaseException:
    """The losing side's error in a deadlock on items ``first`` and ``second``."""
    a_row = text("UPDATE items SET name = 'a' WHERE id = :id")
    b_row = text("UPDATE items SET name = 'b' WHERE id = :id")
    async with engine.connect() as a, engine.connect() as b:
        await a.execute(a_row, {"id": first})
        await b.execute(b_row, {"id": second})
        dialect = "mysql" if engine.dialect.name == "mariadb" else engine.dialect.name
        a_pid = int(await a.scalar(BACKEND_ID[dialect]))
        blocked = asyncio.create_task(a.execute(a_row, {"id": second}))
        await until(lambda: backend_waits_for_a_lock(engine, a_pid))  # a first
        results = await asyncio.gather(
            blocked, b.execute(b_row, {"id": first}), return_exceptions=True
        )
    return next(r for r in results if isinstance(r, BaseException))
