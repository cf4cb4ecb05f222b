"""The load harness and ``routing-db bench`` on the real cluster."""

from __future__ import annotations

import contextlib
import functools
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    async_sessionmaker,
    create_async_engine,
)

from routing_db import (
    ConfigurationError,
    LoadProcessError,
    Router,
    RoutingSettings,
    routing_sessionmaker,
)
from routing_db._cli.main import _plain_writer, main
from routing_db.loadtest import Workload, prepare, run_load, run_load_in_processes
from routing_db.testing import PostgresCluster


@pytest.fixture
async def bench_table(pg_cluster: PostgresCluster) -> None:
    engine = create_async_engine(pg_cluster.writer_url)
    try:
        await prepare(engine, rows=200)  # idempotent: creates and fills once
    finally:
        await engine.dispose()
    await pg_cluster.await_replicated()


@pytest.fixture
async def small_pool(
    pg_cluster: PostgresCluster, bench_table: None
) -> AsyncIterator[AsyncEngine]:
    engine = create_async_engine(
        pg_cluster.writer_url, pool_size=5, max_overflow=0, pool_timeout=1
    )
    try:
        yield engine
    finally:
        await engine.dispose()


async def test_short_sessions_do_not_starve_the_pool(small_pool: AsyncEngine) -> None:
    summary = await run_load(
        async_sessionmaker(small_pool),
        profile="point_read",
        concurrency=100,
        operations=1000,
        workload=Workload(rows=200),
    )
    assert summary.succeeded == 1000
    assert summary.timeouts == 0 and summary.errors == {}
    (engine,) = summary.engines
    assert engine.checkouts == 1000
    assert engine.peak_checked_out == 5  # the whole pool, never more
    # Busy with point reads, the client's event loop does work that is
    # measured (how much depends on what else the machine runs).
    assert summary.client_cpu > 0
    json.loads(summary.model_dump_json())


async def test_sessions_held_across_awaits_starve_it(small_pool: AsyncEngine) -> None:
    summary = await run_load(
        async_sessionmaker(small_pool),
        profile="hold",
        concurrency=100,
        operations=100,
        workload=Workload(rows=200, hold_ms=100),
    )
    # 5 connections, each held ~100 ms per task: 100 tasks need ~2 s of pool
    # time, so the later ones wait out pool_timeout=1.
    assert summary.timeouts > 0
    assert summary.engines[0].timeouts == summary.timeouts
    assert summary.checkout_wait_ms.max >= 1000 * 0.9
    # ...while the client mostly sleeps: the pool, not the CPU, is the limit.
    assert summary.client_cpu < 0.5
    assert summary.succeeded + summary.timeouts == 100


async def test_replicas_serve_io_bound_reads(
    pg_cluster: PostgresCluster, bench_table: None
) -> None:
    router = Router.from_urls(
        pg_cluster.writer_url, pg_cluster.replica_urls, pool_size=3, max_overflow=0
    )
    try:
        summary = await run_load(
            routing_sessionmaker(router),
            profile="io_read",
            concurrency=12,
            operations=120,
            workload=Workload(rows=200, io_ms=5),
        )
    finally:
        await router.dispose()
    roles = {e.role: e for e in summary.engines if e.role == "writer"}
    replicas = [e for e in summary.engines if e.role == "replica"]
    assert roles["writer"].operations == 0
    assert sum(e.operations for e in replicas) == 120
    assert all(e.operations > 0 and e.peak_checked_out <= 3 for e in replicas)


async def test_custom_profile_and_bad_arguments(small_pool: AsyncEngine) -> None:
    calls = 0

    async def ping(factory: async_sessionmaker[Any], workload: Workload) -> None:
        nonlocal calls
        calls += 1
        async with factory() as session:
            await session.execute(text("SELECT 1"))

    summary = await run_load(async_sessionmaker(small_pool), profile=ping, operations=7)
    assert calls == 7 and summary.profile == "ping"
    with pytest.raises(ConfigurationError, match="profile"):
        await run_load(async_sessionmaker(small_pool), profile="nope", operations=1)
    with pytest.raises(ConfigurationError, match="exactly one"):
        await run_load(async_sessionmaker(small_pool), duration=1, operations=1)


async def test_progress_is_reported_while_a_load_runs(small_pool: AsyncEngine) -> None:
    seen: list[tuple[int, float]] = []
    summary = await run_load(
        async_sessionmaker(small_pool),
        profile="point_read",
        concurrency=4,
        duration=1.3,
        workload=Workload(rows=200),
        progress=lambda done, elapsed: seen.append((done, elapsed)),
    )
    # Every 0.5 s: operations finished so far, seconds since the start.
    assert len(seen) >= 2
    counts, times = [done for done, _ in seen], [elapsed for _, elapsed in seen]
    assert counts[0] > 0 and counts == sorted(counts)
    assert counts[-1] <= summary.operations
    assert times[0] >= 0.45 and times == sorted(times)
    assert times[-1] <= summary.duration_s


@contextlib.asynccontextmanager
async def routed_sessions(
    writer: str, replicas: list[str], pids: Path
) -> AsyncIterator[async_sessionmaker[Any]]:
    """Opened in each load process (pickled by reference)."""
    with pids.open("a") as file:
        file.write(f"{os.getpid()}\n")
    router = Router.from_urls(writer, replicas, pool_size=2, max_overflow=0)
    try:
        yield routing_sessionmaker(router)
    finally:
        await router.dispose()


async def test_a_load_spread_over_processes(
    pg_cluster: PostgresCluster, bench_table: None, tmp_path: Path
) -> None:
    pids = tmp_path / "pids"
    make = functools.partial(
        routed_sessions, pg_cluster.writer_url, pg_cluster.replica_urls, pids
    )
    summary = await run_load_in_processes(
        make,
        processes=2,
        profile="point_read",
        concurrency=6,
        operations=400,
        workload=Workload(rows=200),
    )
    ran_in = set(pids.read_text().split())
    assert len(ran_in) == 2 and str(os.getpid()) not in ran_in
    assert (summary.processes, summary.concurrency) == (2, 6)
    assert summary.succeeded == summary.operations == summary.latency_ms.count == 400
    replicas = [e for e in summary.engines if e.role == "replica"]
    assert len(replicas) == 2 and sum(e.operations for e in replicas) == 400
    assert sum(e.checkouts for e in replicas) == 400
    # Each process has its own pool of 2 per engine: peaks add up to at most 4.
    assert all(0 < e.peak_checked_out <= 4 for e in replicas)

    seen: list[tuple[int, float]] = []
    summary = await run_load_in_processes(
        make,
        processes=2,
        concurrency=4,
        duration=1.5,
        workload=Workload(rows=200),
        progress=lambda done, elapsed: seen.append((done, elapsed)),
    )
    # Both processes' operations so far, summed, while they run (a report
    # may come as the last operations finish, just past the 1.5 s; the
    # reports are 0.5 s apart).
    assert seen and 0 < seen[0][0] <= seen[-1][0] <= summary.operations
    assert all(0 < elapsed < 1.5 + 0.5 for _, elapsed in seen)

    broken = functools.partial(routed_sessions, "mysql+pymysql://u@h/db", [], pids)
    with pytest.raises(LoadProcessError, match="load process 0: ConfigurationError"):
        await run_load_in_processes(broken, processes=2, operations=10)
    with pytest.raises(ConfigurationError, match="at least the process count"):
        await run_load_in_processes(make, processes=3, concurrency=2, operations=1)


def with_password(url: str, password: str) -> str:
    # The test cluster trusts loopback: any password is accepted, so the
    # command really connects while the URL carries a secret to leak.
    return url.replace("postgres@", f"postgres:{password}@", 1)


def test_cli_bench_json_and_plot(
    pg_cluster: PostgresCluster,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    secret = "s3cret-pw"
    png = tmp_path / "bench.png"
    code = main(
        [
            "bench",
            "--writer-url", with_password(pg_cluster.writer_url, secret),
            "--replica-url", with_password(pg_cluster.replica_urls[0], secret),
            "--concurrency", "2,8",
            "--duration", "0.5",
            "--rows", "200",
            "--compare",
            "--json",
            "--plot", str(png),
        ]
    )  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 0, err
    results = json.loads(out)
    assert [(r["variant"], r["concurrency"]) for r in results] == [
        ("plain", 2),
        ("routed", 2),
        ("plain", 8),
        ("routed", 8),
    ]
    assert all(r["succeeded"] > 0 and r["timeouts"] == 0 for r in results)
    for r in results:  # what the plot's last panel shows
        on_replicas = sum(
            e["operations"] for e in r["engines"] if e["role"] == "replica"
        )
        assert (on_replicas > 0) is (r["variant"] == "routed"), r["engines"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert png.stat().st_size > 20_000
    assert secret not in out + err


async def test_cli_compare_plain_writer_has_no_router_hooks(
    pg_cluster: PostgresCluster,
) -> None:
    values = {"writer_url": pg_cluster.writer_url, "pool_size": 3, "max_overflow": 1}
    plain = _plain_writer(values)
    router = Router.from_settings(RoutingSettings(**values))
    try:
        routed = router.writer.sync_engine
        # What --compare's plain run would otherwise share: the idle check at
        # checkout and the handle_error translations.
        assert routed.pool.dispatch.checkout and routed.dialect.dispatch.handle_error
        sync = plain.sync_engine
        assert not sync.pool.dispatch.checkout
        assert not sync.pool.dispatch.checkin
        assert not sync.dialect.dispatch.handle_error
        assert sync is not routed and sync.url == routed.url
        assert (sync.pool.size(), sync.pool._max_overflow) == (3, 1)  # type: ignore[attr-defined]
        async with plain.connect() as conn:
            port = await conn.scalar(text("SELECT inet_server_port()"))
        assert port == int(
            pg_cluster.sql(pg_cluster.primary, "SELECT inet_server_port()")
        )
    finally:
        await plain.dispose()
        await router.dispose()


def test_cli_bench_in_processes(
    pg_cluster: PostgresCluster, bench_table: None, capsys: pytest.CaptureFixture[str]
) -> None:
    secret = "s3cret-pw"
    code = main(
        ["bench", "--writer-url", with_password(pg_cluster.writer_url, secret),
         "--concurrency", "4", "--duration", "0.5", "--rows", "200",
         "--processes", "2", "--no-prepare", "--compare", "--json"]
    )  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 0, err
    results = json.loads(out)
    assert [r["variant"] for r in results] == ["plain", "routed"]
    for result in results:
        assert (result["processes"], result["concurrency"]) == (2, 4)
        assert result["succeeded"] > 0 and result["errors"] == {}
    assert secret not in out + err
    code = main(["bench", "--writer-url", pg_cluster.writer_url, "--processes", "0"])
    _, err = capsys.readouterr()
    assert code == 2 and "--processes must be at least 1" in err


def test_cli_bench_table_and_errors(
    pg_cluster: PostgresCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        ["bench", "--writer-url", pg_cluster.writer_url, "--concurrency", "3",
         "--duration", "0.3", "--rows", "200"]
    )  # fmt: skip
    out, _ = capsys.readouterr()
    assert code == 0
    header, row = out.strip().splitlines()
    assert "ops/s" in header and "wait p99 ms" in header and "served by" in header
    assert row.split()[0] == "routed"
    assert row.endswith("writer 100%")  # no replica given: the writer serves

    secret = "s3cret-pw"
    code = main(["bench", "--writer-url", f"postgresql+psycopg2://u:{secret}@h/db"])
    _, err = capsys.readouterr()
    assert code == 2 and "asyncpg" in err and secret not in err

    code = main(
        ["bench", "--writer-url", f"postgresql+asyncpg://u:{secret}@127.0.0.1:1/db",
         "--duration", "0.1", "--concurrency", "1"]
    )  # fmt: skip
    _, err = capsys.readouterr()
    assert code == 1 and "cannot reach" in err and secret not in err


def test_cli_bench_progress_line(
    pg_cluster: PostgresCluster, bench_table: None, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["bench", "--writer-url", pg_cluster.writer_url, "--concurrency", "3",
            "--duration", "0.8", "--rows", "200", "--no-prepare"]  # fmt: skip
    # Not a terminal (captured): no line rewritten in place, unless asked for.
    assert main(args) == 0
    _, err = capsys.readouterr()
    assert "ops/s" not in err and "\r" not in err
    assert main([*args, "--progress"]) == 0
    _, err = capsys.readouterr()
    assert "\rrouted c=3: " in err and " ops/s" in err
    assert main([*args, "--no-progress"]) == 0
    _, err = capsys.readouterr()
    assert "ops/s" not in err
