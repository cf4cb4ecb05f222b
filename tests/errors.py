"""Real errors, captured from real servers, for the classification tests."""

from __future__ import annotations

import asyncio
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

__all__ = ["capture", "deadlock"]


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
        blocked = asyncio.create_task(a.execute(a_row, {"id": second}))
        await asyncio.sleep(0.2)  # let a block on b's lock first
        results = await asyncio.gather(
            blocked, b.execute(b_row, {"id": first}), return_exceptions=True
        )
    return next(r for r in results if isinstance(r, BaseException))
