"""Slow-query log, per-role session settings and the starvation detector."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy import text

from routing_db import (
    ConfigurationError,
    Router,
    RoutingListener,
    RoutingSettings,
    read_only,
    routing_sessionmaker,
)
from routing_db.metrics import register_metrics
from routing_db.testing import PostgresCluster

from .conftest import where
from .routers import RouterMaker

SECRET = "s3cret-pw"


def with_password(url: str) -> str:
    return url.replace("postgres@", f"postgres:{SECRET}@", 1)


def messages(caplog: pytest.LogCaptureFixture, logger: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == logger]


async def test_slow_query_log(
    cluster: PostgresCluster,
    caplog: pytest.LogCaptureFixture,
    make_router: RouterMaker,
) -> None:
    router = make_router(
        with_password(cluster.writer_url),
        [with_password(url) for url in cluster.replica_urls],
        slow_query_seconds=0.1,
    )
    Session = routing_sessionmaker(router)
    caplog.set_level(logging.WARNING, logger="routing_db.slow")
    async with Session() as session:
        await session.execute(text("SELECT 1"))  # fast: not logged
        await session.execute(
            text("SELECT pg_sleep(0.15), :marker AS m"), {"marker": "private"}
        )
        padding = " + ".join(["1"] * 400)  # a statement over 500 characters
        await session.execute(text(f"SELECT pg_sleep(0.15), {padding}"))
    async with Session() as session, read_only:
        await session.execute(text("SELECT pg_sleep(0.12)"))
    logged = messages(caplog, "routing_db.slow")
    assert len(logged) == 3
    writer, replica = router.status()[0]["name"], router.status()[1]["name"]
    assert f"slow query on {writer}" in logged[0]
    assert "pg_sleep(0.15), $1" in logged[0] or "pg_sleep(0.15), %" in logged[0]
    assert "private" not in " ".join(logged)  # parameters are not logged
    assert len(logged[1].split(": ", 2)[2]) <= 501
    assert any(replica in line for line in logged[2:])
    assert all(SECRET not in line for line in logged)
    seconds = float(logged[0].split(": ")[1].removesuffix(" s"))
    assert seconds >= 0.15


async def test_slow_query_log_with_parameters(
    cluster: PostgresCluster,
    caplog: pytest.LogCaptureFixture,
    make_router: RouterMaker,
) -> None:
    router = make_router(
        cluster.writer_url, slow_query_seconds=0.05, log_slow_parameters=True
    )
    caplog.set_level(logging.WARNING, logger="routing_db.slow")
    async with routing_sessionmaker(router)() as session:
        await session.execute(text("SELECT pg_sleep(0.06), :v"), {"v": "shown"})
    (line,) = messages(caplog, "routing_db.slow")
    assert "shown" in line


async def test_a_listener_implements_only_what_it_needs(
    cluster: PostgresCluster, ports: dict[str, Any]
) -> None:
    class Routed(RoutingListener):
        def __init__(self) -> None:
            self.seen: list[tuple[str, str, str]] = []

        def routed(self, engine: str, role: str, reason: str) -> None:
            self.seen.append((engine, role, reason))

    router = Router.from_urls(cluster.writer_url, cluster.replica_urls)
    listener = Routed()
    router.add_listener(listener)  # the other events are no-ops
    Session = routing_sessionmaker(router)
    try:
        async with Session() as session, read_only:
            port, _ = await where(session)
        async with Session() as session:
            await where(session)
        router.remove_listener(listener)
        async with Session() as session:
            await where(session)
    finally:
        await router.dispose()
    writer = router.status()[0]["name"]
    (replica,) = [s["name"] for s in router.status() if f":{port}/" in s["name"]]
    assert listener.seen == [
        (replica, "replica", "read_only"),
        (writer, "writer", "default"),
    ]


async def test_session_settings_per_role(
    cluster: PostgresCluster, monkeypatch: pytest.MonkeyPatch, make_router: RouterMaker
) -> None:
    settings = RoutingSettings(
        writer_url=cluster.writer_url,
        replica_urls=cluster.replica_urls,
        statement_timeout_ms=1234,
        replica_statement_timeout_ms=5678,
        application_name="orders-api",
        timezone="Europe/Paris",
        search_path="public, pg_catalog",  # a space: escaped for psycopg
    )
    router = make_router.keep(Router.from_settings(settings))
    show = text(
        "SELECT current_setting('statement_timeout'), "
        "current_setting('application_name'), current_setting('TimeZone'), "
        "current_setting('search_path'), "
        "current_setting('default_transaction_read_only')"
    )
    Session = routing_sessionmaker(router)
    async with Session() as session:
        assert tuple((await session.execute(show)).one()) == (
            "1234ms",
            "orders-api",
            "Europe/Paris",
            "public, pg_catalog",
            "off",
        )
    async with Session() as session, read_only:
        assert tuple((await session.execute(show)).one()) == (
            "5678ms",
            "orders-api",
            "Europe/Paris",
            "public, pg_catalog",
            "on",  # replicas stay read-only
        )


def test_session_settings_need_one_postgresql_driver_per_role() -> None:
    settings = RoutingSettings(
        writer_url="postgresql+psycopg://u@h/db",
        replica_urls="postgresql+psycopg://u@r1/db,postgresql+asyncpg://u@r2/db",
        application_name="x",
    )
    with pytest.raises(ConfigurationError, match="replica URLs to use one"):
        settings.router_kwargs()
    sqlite = RoutingSettings(writer_url="sqlite+aiosqlite://", timezone="UTC")
    with pytest.raises(ConfigurationError, match="writer URLs to use one"):
        sqlite.router_kwargs()


async def test_starvation_detector_names_the_holder(
    cluster: PostgresCluster, caplog: pytest.LogCaptureFixture
) -> None:
    router = Router.from_urls(
        cluster.writer_url,
        cluster.replica_urls,
        hold_warning_seconds=0.2,
        monitor_interval=0.05,
    )
    registry = CollectorRegistry()
    metrics = register_metrics(router, registry)
    caplog.set_level(logging.WARNING, logger="routing_db.starvation")
    Session = routing_sessionmaker(router)
    try:
        async with router:
            async with Session() as session:
                await session.execute(text("SELECT 1"))  # checks out the writer
                await asyncio.sleep(0.5)  # the held await under test
                logged = messages(caplog, "routing_db.starvation")
                # The monitor's scan warned while the connection was still held.
                assert len(logged) == 1
                assert "is held" in logged[0]
                assert "test_observability_pg.py" in logged[0]
                assert "in test_starvation_detector_names_the_holder" in logged[0]
            logged = messages(caplog, "routing_db.starvation")
            assert len(logged) == 2 and "was held" in logged[1]
            async with Session() as session:  # short: no warning
                await session.execute(text("SELECT 1"))
            assert len(messages(caplog, "routing_db.starvation")) == 2
            writer = router.status()[0]["name"]
            warnings = registry.get_sample_value(
                "routing_db_starvation_warnings_total",
                {"engine": writer, "kind": "hold"},
            )
            assert warnings == 2
    finally:
        metrics.unregister()


async def test_starvation_detector_flags_long_checkout_waits(
    cluster: PostgresCluster, caplog: pytest.LogCaptureFixture
) -> None:
    router = Router.from_urls(
        cluster.writer_url,
        pool_size=1,
        max_overflow=0,
        pool_timeout=1.0,
        checkout_wait_warning=0.2,
    )
    caplog.set_level(logging.WARNING, logger="routing_db.starvation")
    Session = routing_sessionmaker(router)

    async def hog() -> None:
        async with Session() as session:
            await session.execute(text("SELECT 1"))
            await asyncio.sleep(0.4)  # holds the only connection

    async def waiter() -> None:
        await asyncio.sleep(0.05)
        async with Session() as session:
            await session.execute(text("SELECT 1"))

    try:
        await asyncio.gather(hog(), waiter())
    finally:
        await router.dispose()
    (line,) = messages(caplog, "routing_db.starvation")
    assert "waited" in line and "pool_timeout 1.0 s" in line


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("slow_query_seconds", -1),
        ("hold_warning_seconds", -1),
        ("checkout_wait_warning", 0),
        ("checkout_wait_warning", 1.5),
    ],
)
def test_bad_observability_options(option: str, value: float) -> None:
    options: dict[str, Any] = {option: value}
    with pytest.raises(ConfigurationError, match=option):
        Router.from_urls("postgresql+asyncpg://u@h/db", **options)
