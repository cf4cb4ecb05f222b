"""A load for the Patroni tests: unique-key writers that read their own
write back under ``read_only``, and plain readers; everything they saw."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
import traceback
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import async_sessionmaker

from routing_db import RoutingSession, read_only
from routing_db.testing import PatroniCluster

from ..errors import allowed

INSERT = text("INSERT INTO pat_items (key) VALUES (:key)")
FIND = text("SELECT count(*) FROM pat_items WHERE key = :key")
COUNT = text("SELECT count(*) FROM pat_items")
DDL = "CREATE TABLE IF NOT EXISTS pat_items (key text NOT NULL)"

__all__ = [
    "COUNT",
    "DDL",
    "FIND",
    "INSERT",
    "Load",
    "allowed",
    "keys_on",
    "watch_leader",
]


@dataclasses.dataclass
class Write:
    """One write: its key, when it began, when it was acknowledged."""

    key: str
    began: float
    acked: float | None = None
    ended: float | None = None
    error: BaseException | None = None


class Load:
    """``writers`` tasks writing unique keys and reading each back (with the
    context's causal token), ``readers`` tasks reading under ``read_only``."""

    def __init__(
        self,
        Session: async_sessionmaker[RoutingSession],
        *,
        writers: int = 5,
        readers: int = 5,
    ) -> None:
        self.Session = Session
        self.writes: list[Write] = []
        self.reads = 0
        self.read_errors: list[BaseException] = []
        self.read_traces: list[str] = []
        self.stale: list[str] = []
        self._stop = asyncio.Event()
        self._ack = asyncio.Event()  # set on each acknowledged write
        self._tasks = [
            *(asyncio.create_task(self._writer(i)) for i in range(writers)),
            *(asyncio.create_task(self._reader()) for _ in range(readers)),
        ]

    async def stop(self) -> None:
        """Stop every task; return once they ended."""
        self._stop.set()
        await asyncio.gather(*self._tasks)

    async def _writer(self, task: int) -> None:
        n = 0
        while not self._stop.is_set():
            write = Write(f"w{task}-{n}", time.monotonic())
            n += 1
            self.writes.append(write)
            try:
                async with self.Session() as session:
                    await session.execute(INSERT, {"key": write.key})
                    await session.commit()
                write.acked = write.ended = time.monotonic()
                self._ack.set()
            except Exception as exc:  # judged by the test (lost, private?)
                write.error, write.ended = exc, time.monotonic()
                await asyncio.sleep(0.05)
                continue
            try:
                async with self.Session() as session, read_only:
                    found = await session.scalar(FIND, {"key": write.key})
                self.reads += 1
                if found != 1:
                    self.stale.append(f"{write.key} found {found}")
            except Exception as exc:  # counted: the tests want none
                self._read_failed(exc)
            await asyncio.sleep(0.005)

    def _read_failed(self, error: BaseException) -> None:
        self.read_errors.append(error)
        if len(self.read_traces) < 3:  # where it failed: the statement or close
            self.read_traces.append("".join(traceback.format_exception(error)))

    async def _reader(self) -> None:
        while not self._stop.is_set():
            try:
                async with self.Session() as session, read_only:
                    await session.scalar(COUNT)
                self.reads += 1
            except Exception as exc:  # counted: the tests want none
                self._read_failed(exc)
            await asyncio.sleep(0.005)

    async def acked_after(self, moment: float, *, within: float) -> None:
        """Return once a write is acknowledged at or after ``moment``, or
        ``within`` seconds passed (the test judges which)."""

        async def first() -> None:
            while not any((w.acked or 0.0) >= moment for w in self.writes):
                self._ack.clear()
                await self._ack.wait()

        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(first(), within)

    def acked(self) -> list[Write]:
        """The writes the application was told were committed."""
        return [write for write in self.writes if write.acked is not None]

    def errors(self) -> list[BaseException]:
        """Every exception the load's tasks saw."""
        writes = [w.error for w in self.writes if w.error is not None]
        return [*writes, *self.read_errors]


def keys_on(cluster: PatroniCluster) -> list[str]:
    """Every key on the leader, once the cluster is whole again."""
    leader = cluster.leader()
    assert leader is not None
    out = cluster.sql(leader, "SELECT key FROM pat_items")
    return out.splitlines()


async def watch_leader(
    cluster: PatroniCluster, changed: Any, seen: dict[str, float]
) -> None:
    """Record in ``seen["at"]`` when Patroni first reports a running leader
    for which ``changed(name)`` is true (polled every 20 ms)."""
    while "at" not in seen:
        leader = await asyncio.to_thread(cluster.leader)
        if leader is not None and changed(leader.name):
            seen["at"] = time.monotonic()
            seen["leader"] = leader.name  # type: ignore[assignment]
            return
        await asyncio.sleep(0.02)
