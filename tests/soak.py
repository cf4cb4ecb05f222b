"""A seeded chaos soak: a user's load while the cluster's servers fail under it.

Client tasks run write -> commit -> ``read_only`` read-your-writes cycles, each
in a fresh context as a request would, plus plain replica reads, while a
fault task crashes, stops, restarts, hangs replicas, pauses their replay,
stops their streaming and makes them cancel reads for recovery conflicts, on
a schedule drawn from the seed (``run``, ``soak_faults``), or restarts the primary
(``run_primary_restarts``). Everything is checked on the servers: which one
served a read (``inet_server_port()``), which writes the primary holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import random
import statistics
import time
from collections import Counter
from collections.abc import Callable, Coroutine
from typing import Any

from sqlalchemy import func, insert, select
from sqlalchemy.ext.asyncio import async_sessionmaker

from routing_db import (
    CommitOutcomeUnknown,
    RetryPolicy,
    Router,
    RoutingListener,
    RoutingSession,
    read_only,
    routing_sessionmaker,
)
from routing_db._retry import is_connection_error
from routing_db.testing import PostgresCluster

from .models import Item
from .soak_faults import ReplicaFaults

__all__ = ["Summary", "run", "run_primary_restarts"]

Maker = async_sessionmaker[RoutingSession]
ITERATION_BOUND = 30.0  # seconds one cycle may take before it counts as a hang


@dataclasses.dataclass
class Summary:
    """What one soak run did and saw."""

    seed: int
    seconds: float
    writes_acknowledged: int = 0
    reads: int = 0
    stale_reads: int = 0
    hangs: int = 0
    read_errors: Counter[str] = dataclasses.field(default_factory=Counter)
    write_errors: Counter[str] = dataclasses.field(default_factory=Counter)
    faults: Counter[str] = dataclasses.field(default_factory=Counter)
    # First statements run again, by why (routing_db_retries_total's kind).
    reruns: Counter[str] = dataclasses.field(default_factory=Counter)
    served_by: Counter[str] = dataclasses.field(default_factory=Counter)
    acknowledged: list[str] = dataclasses.field(default_factory=list)
    missing: list[str] = dataclasses.field(default_factory=list)
    duplicated: list[str] = dataclasses.field(default_factory=list)
    # Seconds until service came back: replicas serving (run), writes
    # committing (run_primary_restarts).
    recovered_after: list[float] = dataclasses.field(default_factory=list)
    # Read latencies by the phase a read started in (healthy / hung / after).
    latencies: dict[str, list[float]] = dataclasses.field(default_factory=dict)

    def read_p99(self) -> dict[str, float]:
        """Read p99 seconds by phase (phases with too few reads left out)."""
        return {
            phase: statistics.quantiles(took, n=100)[98]
            for phase, took in self.latencies.items()
            if len(took) >= 2
        }

    def __str__(self) -> str:
        return (
            f"soak seed={self.seed} seconds={self.seconds:.0f}: "
            f"writes acknowledged {self.writes_acknowledged}, reads {self.reads}, "
            f"stale reads {self.stale_reads}, hangs {self.hangs}, "
            f"read errors {dict(self.read_errors)}, "
            f"write errors {dict(self.write_errors)}, faults {dict(self.faults)}, "
            f"reruns {dict(self.reruns)}, "
            f"served by {dict(self.served_by)}, missing {len(self.missing)}, "
            f"duplicated {len(self.duplicated)}, "
            f"recovered after {[round(s, 2) for s in self.recovered_after]} s, "
            f"read p99 { ({k: round(v, 3) for k, v in self.read_p99().items()}) } s"
        )


class _Reruns(RoutingListener):
    def __init__(self, summary: Summary) -> None:
        self.summary = summary

    def retried(self, kind: str, outcome: str) -> None:
        self.summary.reruns[f"{kind} {outcome}"] += 1


def _name(error: BaseException) -> str:
    cause = getattr(error, "orig", None) or error.__cause__
    inner = f"({type(cause).__name__})" if cause is not None else ""
    return f"{type(error).__name__}{inner}"


def make_router(cluster: PostgresCluster, clients: int) -> Router:
    """The router a user of the soak's settings would build."""
    return Router.from_urls(
        cluster.writer_url,
        cluster.replica_urls,
        pool_size=clients // 2,
        max_overflow=clients // 2,
        pool_timeout=10,
        monitor_interval=0.2,
        sticky_seconds=0,
        retry=RetryPolicy(attempts=5),
        replica_read_timeout=1.0,
        connect_timeout=2.0,
    )


async def _fresh(fn: Callable[[], Coroutine[Any, Any, None]]) -> None:
    # One request: its own empty context, so no causal token leaks between.
    await asyncio.create_task(fn(), context=contextvars.Context())


class _Clients:
    """The application's side: cycles of writes and reads until ``stop``."""

    def __init__(
        self,
        Session: Maker,
        summary: Summary,
        *,
        causal: bool,
        phase: Callable[[], str] = lambda: "healthy",
    ) -> None:
        self.Session = Session
        self.summary = summary
        self.causal = causal
        self.phase = phase
        self.stop = asyncio.Event()

    async def _write(self, key: str) -> bool:
        try:
            async with self.Session() as session:
                await session.execute(insert(Item).values(name=key))
                await session.commit()
        except Exception as exc:
            self.summary.write_errors[_name(exc)] += 1
            return False
        self.summary.writes_acknowledged += 1
        self.summary.acknowledged.append(key)
        return True

    async def _read(self, key: str | None) -> None:
        statement = select(func.count(), func.inet_server_port()).select_from(Item)
        if key is not None:
            statement = statement.where(Item.name == key)
        phase, started = self.phase(), time.monotonic()
        try:
            async with self.Session() as session, read_only:
                found, port = (await session.execute(statement)).one()
        except Exception as exc:
            self.summary.read_errors[_name(exc)] += 1
            return
        self.summary.reads += 1
        took = time.monotonic() - started
        self.summary.latencies.setdefault(phase, []).append(took)
        self.summary.served_by[str(port)] += 1
        if key is not None and found != 1:
            self.summary.stale_reads += 1

    async def cycle(self, task: int, n: int) -> None:
        key = f"t{task}-{n}"

        async def write_then_read() -> None:
            if await self._write(key):
                if self.causal:
                    await self._read(key)
                else:  # the control: a new request without the token
                    await _fresh(lambda: self._read(key))

        await _fresh(write_then_read)
        await _fresh(lambda: self._read(None))

    async def long_reads(self) -> None:
        """Reads of 0.3 s: long enough for a standby's replay to conflict."""
        while not self.stop.is_set():
            try:
                async with asyncio.timeout(ITERATION_BOUND):
                    async with self.Session() as session, read_only:
                        await session.execute(select(func.pg_sleep(0.3)))
            except TimeoutError:
                self.summary.hangs += 1
            except Exception as exc:
                self.summary.read_errors[_name(exc)] += 1

    async def client(self, task: int) -> None:
        n = 0
        while not self.stop.is_set():
            try:
                async with asyncio.timeout(ITERATION_BOUND):
                    await self.cycle(task, n)
            except TimeoutError:
                self.summary.hangs += 1
            n += 1


async def _until_both_replicas_serve(Session: Maker, cluster: PostgresCluster) -> float:
    """Seconds until a read on each replica was served there (server-checked)."""
    start = time.monotonic()
    wanted = {node.port for node in cluster.replicas}
    seen: set[int] = set()
    while seen != wanted:
        assert time.monotonic() - start < 10, f"replicas serving: {seen} of {wanted}"
        with contextlib.suppress(Exception):
            async with Session() as session, read_only:
                port, standby = (
                    await session.execute(
                        select(func.inet_server_port(), func.pg_is_in_recovery())
                    )
                ).one()
            if standby:
                seen.add(int(port))
        await asyncio.sleep(0.05)
    return time.monotonic() - start


async def _check_writes(cluster: PostgresCluster, summary: Summary) -> None:
    rows = await asyncio.to_thread(
        cluster.sql, cluster.primary, "SELECT name, count(*) FROM items GROUP BY name"
    )
    counts = dict(line.split("|") for line in rows.splitlines() if line)
    summary.missing = [k for k in summary.acknowledged if k not in counts]
    summary.duplicated = [k for k, n in counts.items() if int(n) > 1]


async def run(
    cluster: PostgresCluster,
    *,
    seconds: float,
    seed: int,
    clients: int = 40,
    causal: bool = True,
    inject_faults: bool = True,
) -> Summary:
    """The soak with replica faults (unless ``inject_faults`` is false); the
    cluster is healed before it returns."""
    rng = random.Random(seed)
    summary = Summary(seed=seed, seconds=seconds)
    router = make_router(cluster, clients)
    Session = routing_sessionmaker(router)
    router.add_listener(_Reruns(summary))
    faults = ReplicaFaults(cluster, rng)
    summary.faults = faults.faults
    load = _Clients(Session, summary, causal=causal, phase=lambda: faults.phase)
    try:
        async with router:
            tasks = [asyncio.create_task(load.client(i)) for i in range(clients)]
            tasks += [asyncio.create_task(load.long_reads()) for _ in range(2)]
            faulting = (
                asyncio.create_task(faults.run(load.stop)) if inject_faults else None
            )
            await asyncio.sleep(seconds)  # the run's length, not a wait for state
            load.stop.set()
            if faulting is not None:
                await faulting
            await cluster.aheal()
            summary.recovered_after.append(
                await _until_both_replicas_serve(Session, cluster)
            )
            await asyncio.gather(*tasks)
    finally:
        load.stop.set()
        await cluster.aheal()
    await _check_writes(cluster, summary)
    return summary


async def _writes_again(Session: Maker, since: float) -> float:
    """Seconds from ``since`` until a write commits again."""
    while True:
        with contextlib.suppress(Exception):
            async with Session() as session:
                await session.execute(insert(Item).values(name="probe"))
                await session.commit()
            return time.monotonic() - since
        assert time.monotonic() - since < 10, "no write committed for 10 s"
        await asyncio.sleep(0.05)


def allowed_write_error(error: BaseException) -> bool:
    """What a primary restart may surface to a writer: nothing else."""
    return isinstance(error, CommitOutcomeUnknown) or is_connection_error(error)


async def run_primary_restarts(
    cluster: PostgresCluster,
    *,
    restarts: int,
    seed: int,
    clients: int = 20,
) -> tuple[Summary, list[BaseException]]:
    """Writers under load while the primary restarts ``restarts`` times."""
    rng = random.Random(seed)
    summary = Summary(seed=seed, seconds=0)
    router = make_router(cluster, clients)
    Session = routing_sessionmaker(router)
    errors: list[BaseException] = []
    stop = asyncio.Event()

    async def writer(task: int) -> None:
        n = 0
        while not stop.is_set():
            key = f"w{task}-{n}"
            n += 1
            try:
                async with asyncio.timeout(ITERATION_BOUND), Session() as session:
                    await session.execute(insert(Item).values(name=key))
                    await session.commit()
            except TimeoutError:
                summary.hangs += 1
                continue
            except Exception as exc:
                errors.append(exc)
                summary.write_errors[_name(exc)] += 1
                continue
            summary.writes_acknowledged += 1
            summary.acknowledged.append(key)

    started = time.monotonic()
    try:
        async with router:
            tasks = [asyncio.create_task(writer(i)) for i in range(clients)]
            for _ in range(restarts):
                await asyncio.sleep(rng.uniform(1.0, 3.0))  # load before the fault
                await cluster.arestart_primary()
                summary.faults["restart_primary"] += 1
                summary.recovered_after.append(
                    await _writes_again(Session, time.monotonic())
                )
            stop.set()
            await asyncio.gather(*tasks)
    finally:
        stop.set()
        await cluster.aheal()
    summary.seconds = time.monotonic() - started
    await _check_writes(cluster, summary)
    summary.duplicated = [k for k in summary.duplicated if k != "probe"]
    return summary, errors
