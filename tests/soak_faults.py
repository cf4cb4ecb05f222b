"""The soak's replica faults: each one begun and, later, ended on a seeded schedule.

A replica has one fault at a time: crashed or stopped (then started),
replay paused, hung (SIGSTOP, then SIGCONT), streaming stopped (then
repointed), or cancelling reads that conflict with replay (its
``max_standby_streaming_delay`` at 0 while the primary updates and vacuums
a table of its own).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import Counter

from routing_db.testing import PostgresCluster

__all__ = ["KINDS", "ReplicaFaults"]

KINDS = ("crash", "stop", "pause", "hang", "stop_streaming", "conflicts")
# How long after a hang ends its reads count as "after" in the read p99s.
AFTER_SECONDS = 2.0
_CHURN = "soak_churn"


class ReplicaFaults:
    """The fault task of a soak run, and the phase its reads are in."""

    def __init__(self, cluster: PostgresCluster, rng: random.Random) -> None:
        self.cluster = cluster
        self.rng = rng
        self.faults: Counter[str] = Counter()
        self._state: list[str | None] = [None] * len(cluster.replicas)
        self._hang_ended = -AFTER_SECONDS

    @property
    def phase(self) -> str:
        """``hung`` while a replica hangs, ``after`` just after, else ``healthy``."""
        if "hang" in self._state:
            return "hung"
        if time.monotonic() - self._hang_ended < AFTER_SECONDS:
            return "after"
        return "healthy"

    async def run(self, stop: asyncio.Event) -> None:
        """Begin or end a fault every 0.3-2 s until ``stop``; end them all then."""
        await asyncio.to_thread(
            self.cluster.sql,
            self.cluster.primary,
            f"CREATE TABLE IF NOT EXISTS {_CHURN} (id int PRIMARY KEY, n int);"
            f" INSERT INTO {_CHURN} VALUES (1, 0) ON CONFLICT DO NOTHING",
        )
        churn = asyncio.create_task(self._churn(stop))
        try:
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.rng.uniform(0.3, 2.0))
                if stop.is_set():
                    break
                index = self.rng.randrange(len(self._state))
                if self._state[index] is None:
                    await self._begin(index, self.rng.choice(KINDS))
                else:
                    await self._end(index)
        finally:
            for index, kind in enumerate(self._state):
                if kind is not None:
                    await self._end(index)
            await churn

    async def _begin(self, index: int, kind: str) -> None:
        cluster = self.cluster
        if kind == "crash":
            await cluster.acrash_replica(index)
        elif kind == "stop":
            await cluster.astop_replica(index)
        elif kind == "pause":
            await cluster.apause_replay(index)
        elif kind == "hang":
            await cluster.ahang_replica(index)
        elif kind == "stop_streaming":
            await cluster.astop_streaming(index)
        else:
            await self._delay(index, "0")
        self._state[index] = kind
        self.faults[kind] += 1

    async def _end(self, index: int) -> None:
        cluster, kind = self.cluster, self._state[index]
        if kind in ("crash", "stop"):
            await cluster.astart_replica(index, wait_streaming=False)
        elif kind == "pause":
            await cluster.aresume_replay(index)
        elif kind == "hang":
            await cluster.aresume_replica(index)
            self._hang_ended = time.monotonic()
        elif kind == "stop_streaming":
            await cluster.aresume_streaming(index)
        else:
            await self._delay(index, None)
        self._state[index] = None

    async def _delay(self, index: int, value: str | None) -> None:
        # Reads that hold up replay are cancelled at once (0), or not (reset).
        node = self.cluster.replicas[index]
        setting = "max_standby_streaming_delay"
        sql = (
            f"ALTER SYSTEM RESET {setting}"
            if value is None
            else f"ALTER SYSTEM SET {setting} = {value}"
        )
        await asyncio.to_thread(self.cluster.sql, node, sql)
        await asyncio.to_thread(self.cluster.sql, node, "SELECT pg_reload_conf()")

    async def _churn(self, stop: asyncio.Event) -> None:
        # Row versions removed under the standbys' running reads: replaying
        # their cleanup conflicts with those reads.
        while not stop.is_set():
            if "conflicts" in self._state:
                for sql in (f"UPDATE {_CHURN} SET n = n + 1", f"VACUUM {_CHURN}"):
                    await asyncio.to_thread(self.cluster.sql, self.cluster.primary, sql)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.05)
