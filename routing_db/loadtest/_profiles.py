"""Workload profiles: what one operation of a load run does."""

from __future__ import annotations

import asyncio
import dataclasses
import random
from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from .._decide.context import read_only
from .._exceptions import ConfigurationError

__all__ = ["PROFILES", "Profile", "Workload", "prepare", "resolve_profile"]

TABLE = "routing_db_bench"
_READ = text(f"SELECT id, counter FROM {TABLE} WHERE id = :id")
_SLOW_READ = text(f"SELECT id, pg_sleep(:s) FROM {TABLE} WHERE id = :id")
_UPDATE = text(f"UPDATE {TABLE} SET counter = counter + 1 WHERE id = :id")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Workload:
    """Parameters every profile may use."""

    rows: int = 1000
    hold_ms: float = 50.0
    io_ms: float = 5.0
    write_fraction: float = 0.1
    rng: random.Random = dataclasses.field(default_factory=random.Random)

    def row_id(self) -> int:
        """A random existing row."""
        return self.rng.randint(1, self.rows)


Profile = Callable[[async_sessionmaker[Any], Workload], Awaitable[None]]


async def point_read(factory: async_sessionmaker[Any], w: Workload) -> None:
    """One primary-key read in its own short session (``read_only``)."""
    async with factory() as session, read_only:
        (await session.execute(_READ, {"id": w.row_id()})).one()


async def write(factory: async_sessionmaker[Any], w: Workload) -> None:
    """One row update, committed."""
    async with factory() as session:
        await session.execute(_UPDATE, {"id": w.row_id()})
        await session.commit()


async def read_heavy(factory: async_sessionmaker[Any], w: Workload) -> None:
    """Point reads with a fraction of writes (``write_fraction``, 10 %)."""
    if w.rng.random() < w.write_fraction:
        await write(factory, w)
    else:
        await point_read(factory, w)


async def hold(factory: async_sessionmaker[Any], w: Workload) -> None:
    """A read, an await of ``hold_ms`` with the session open, another read.

    The session keeps its connection across the await: the pattern that
    starves a pool.
    """
    async with factory() as session, read_only:
        (await session.execute(_READ, {"id": w.row_id()})).one()
        await asyncio.sleep(w.hold_ms / 1000)
        (await session.execute(_READ, {"id": w.row_id()})).one()


async def io_read(factory: async_sessionmaker[Any], w: Workload) -> None:
    """A read that spends ``io_ms`` on the server (``pg_sleep``)."""
    async with factory() as session, read_only:
        params = {"id": w.row_id(), "s": w.io_ms / 1000}
        (await session.execute(_SLOW_READ, params)).one()


PROFILES: dict[str, Profile] = {
    "point_read": point_read,
    "read_heavy": read_heavy,
    "write": write,
    "hold": hold,
    "io_read": io_read,
}


def resolve_profile(profile: str | Profile) -> tuple[str, Profile]:
    """A profile by name, or a custom coroutine function, with its name."""
    if isinstance(profile, str):
        try:
            return profile, PROFILES[profile]
        except KeyError:
            raise ConfigurationError(
                f"unknown profile {profile!r}; use one of {', '.join(PROFILES)} "
                "or pass an async function (factory, workload)"
            ) from None
    return getattr(profile, "__name__", "custom"), profile


async def prepare(writer: AsyncEngine, rows: int = 1000) -> None:
    """Create and fill the benchmark table on the writer, if it is not there."""
    async with writer.begin() as conn:
        await conn.execute(
            text(
                f"CREATE TABLE IF NOT EXISTS {TABLE} (id INTEGER PRIMARY KEY, "
                "counter INTEGER NOT NULL DEFAULT 0)"
            )
        )
        have = (await conn.execute(text(f"SELECT count(*) FROM {TABLE}"))).scalar_one()
        if have < rows:
            await conn.execute(
                text(f"INSERT INTO {TABLE} (id) VALUES (:id)"),
                [{"id": i} for i in range(have + 1, rows + 1)],
            )
