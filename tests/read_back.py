"""Users that write, then read their write back in their next request (a new
context, the causal token carried), as the reader-endpoint tests need."""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from routing_db import RoutingSession, causal_token, current_causal_token, read_only

from .models import Item


@dataclasses.dataclass
class ReadBack:
    """Which server served each read back, the stale ones, the errors."""

    served: list[Any] = dataclasses.field(default_factory=list)
    stale: list[str] = dataclasses.field(default_factory=list)
    errors: list[BaseException] = dataclasses.field(default_factory=list)


async def read_back(
    Session: async_sessionmaker[RoutingSession],
    server: Callable[[AsyncSession], Awaitable[Any]],
    *,
    users: int,
    writes: int,
) -> ReadBack:
    """``users`` tasks each commit ``writes`` rows, one at a time, and read
    each back under ``read_only`` in a new context with the token;
    ``server(session)`` says (on the server) who served the read."""
    seen = ReadBack()

    async def next_request(token: str | None, name: str) -> None:
        with causal_token(token):
            async with Session() as session, read_only:
                found = await session.scalar(
                    select(func.count()).where(Item.name == name)
                )
                served = await server(session)
        seen.served.append(served)
        if found != 1:
            seen.stale.append(f"{name} read on {served}")

    async def user(n: int) -> None:
        for i in range(writes):
            name = f"u{n}-{i}"
            try:
                async with Session() as session:
                    session.add(Item(name=name))
                    await session.commit()
            except Exception as exc:  # counted: the tests want none
                seen.errors.append(exc)
                continue
            request = next_request(current_causal_token(), name)
            try:
                await asyncio.create_task(request, context=contextvars.Context())
            except Exception as exc:  # counted: the tests want none
                seen.errors.append(exc)

    await asyncio.gather(*(user(n) for n in range(users)))
    return seen
