"""8. Patroni: how long are writes unavailable, and is anything lost, when
the leader changes, routing_db following Patroni beside Patroni's documented
HAProxy set-up?

The same write load (5 tasks, unique keys) and the same faults on one Patroni
cluster (etcd, three members, ttl 10 s): a planned switchover, a killed
postmaster (Patroni restarts it in place), a hung leader (its Patroni and
postmaster stopped, its backends answering) and a hung node (every process
stopped). Measured the same way for both: from the moment Patroni reports
the leader (running) to the first write acknowledged after it, the longest
gap between two acknowledged writes, the writes that failed, and the
acknowledged writes missing from the final leader.
"""

from __future__ import annotations

import asyncio
import contextvars
import itertools
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

from routing_db import Router, routing_sessionmaker
from routing_db.testing import PatroniCluster, PatroniMember

from .conftest import measure
from .report import add_section, table

INSERT = text("INSERT INTO bench_patroni (key) VALUES (:key)")
DDL = "CREATE TABLE IF NOT EXISTS bench_patroni (key text NOT NULL)"
WRITERS = 5


async def _writes(
    Session: Any, stop: asyncio.Event, acked: list[tuple[float, str]], failed: list[int]
) -> None:
    async def writer(task: int) -> None:
        n = 0
        while not stop.is_set():
            key = f"{task}-{n}"
            n += 1
            try:
                async with Session() as session:
                    await session.execute(INSERT, {"key": key})
                    await session.commit()
                acked.append((time.monotonic(), key))
            except Exception:  # counted: a failed write
                failed.append(1)
                await asyncio.sleep(0.05)

    await asyncio.gather(
        *(
            asyncio.create_task(writer(i), context=contextvars.Context())
            for i in range(WRITERS)
        )
    )


def _reported(cluster: PatroniCluster, old: PatroniMember, same: bool) -> float:
    """When Patroni reports a running leader (another one, unless ``same``)."""
    while (now := cluster.leader()) is None or (now is old and not same):
        time.sleep(0.02)
    return time.monotonic()


async def _run(
    cluster: PatroniCluster, variant: str, fault: Callable[[PatroniMember], Any]
) -> dict[str, float]:
    leader = cluster.leader()
    assert leader is not None
    cluster.sql(leader, f"{DDL}; TRUNCATE bench_patroni")
    cluster.wait_streaming()
    if variant == "routing_db":
        router = Router.from_cluster(
            cluster.urls, patroni=cluster.rest_urls, writer_wait_timeout=30
        )
        await router.start()
        Session: Any = routing_sessionmaker(router)
        engine = None
    else:
        router = None
        engine = create_async_engine(cluster.haproxy_urls()[0], pool_pre_ping=True)
        Session = async_sessionmaker(engine)
    stop = asyncio.Event()
    acked: list[tuple[float, str]] = []
    failed: list[int] = []
    load = asyncio.create_task(_writes(Session, stop, acked, failed))
    await asyncio.sleep(1.5)
    fault_at = time.monotonic()
    await asyncio.to_thread(fault, leader)
    same = fault.__name__ == "killed"  # Patroni restarts it in place
    reported = await asyncio.to_thread(_reported, cluster, leader, same)
    await asyncio.sleep(10.0)  # HAProxy's checks take seconds to follow
    stop.set()
    await load
    if router is not None:
        await router.dispose()
    if engine is not None:
        await engine.dispose()
    await asyncio.to_thread(cluster.heal)
    final = cluster.leader()
    assert final is not None
    present = set(cluster.sql(final, "SELECT key FROM bench_patroni").splitlines())
    times = sorted(at for at, _ in acked)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    after = [at for at in times if at >= reported]
    return {
        "reported": reported - fault_at,
        "first": (after[0] - reported) if after else float("nan"),
        "gap": max(gaps, default=float("nan")),
        "failed": float(len(failed)),
        "lost": float(sum(key not in present for _, key in acked)),
    }


def test_patroni_failover_windows(benchmark: Any, patroni_cluster: Any) -> None:
    cluster: PatroniCluster = patroni_cluster

    def switchover(old: PatroniMember) -> None:
        cluster.switchover()

    def killed(old: PatroniMember) -> None:
        cluster.kill_postmaster(old)
        deadline = time.monotonic() + 30
        while cluster.leader() is not None and time.monotonic() < deadline:
            time.sleep(0.01)

    def hung_leader(old: PatroniMember) -> None:
        cluster.hang(old)

    def hung_node(old: PatroniMember) -> None:
        cluster.hang(old, every_process=True)

    events = {
        "switchover": switchover,
        "killed postmaster": killed,
        "hung leader (Patroni and postmaster)": hung_leader,
        "hung node (every process)": hung_node,
    }
    cluster.start_haproxy()

    def run() -> list[tuple[str, str, dict[str, float]]]:
        rows = []
        for event, fault in events.items():
            for variant in ("routing_db", "haproxy"):
                rows.append(
                    (event, variant, asyncio.run(_run(cluster, variant, fault)))
                )
        return rows

    try:
        rows = measure(benchmark, run)
    finally:
        cluster.stop_haproxy()
    names = {
        "routing_db": "routing_db `from_cluster(patroni=...)`",
        "haproxy": "SQLAlchemy through HAProxy "
        "(`/primary` check, inter 3s fall 3 rise 2)",
    }
    add_section(
        benchmark,
        "8. Patroni: writes unavailable, and writes lost, when the leader changes",
        [
            "One Patroni cluster (etcd, three members, `ttl` 10 s, `loop_wait` 1 s), "
            f"{WRITERS} writer tasks with unique keys; each event once per variant, "
            "measured the same way. *Reported*: from the fault to Patroni reporting "
            "the leader running; *first write*: from that report to the first write "
            "acknowledged after it; *gap*: the longest time between two acknowledged "
            "writes; *lost*: acknowledged writes missing from the final leader.",
            "",
            *table(
                [
                    "event",
                    "variant",
                    "reported",
                    "first write",
                    "gap",
                    "failed",
                    "lost",
                ],
                (
                    (
                        event,
                        names[variant],
                        f"{r['reported']:.2f} s",
                        f"{r['first']:+.2f} s",
                        f"{r['gap']:.2f} s",
                        int(r["failed"]),
                        int(r["lost"]),
                    )
                    for event, variant, r in rows
                ),
            ),
        ],
    )
    assert all(r["lost"] == 0 for event, variant, r in rows if variant == "routing_db")
