"""Prometheus metrics from a real router on the real cluster."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from sqlalchemy import text

from routing_db import Router, read_only, routing_sessionmaker
from routing_db.metrics import RouterMetrics, register_metrics
from routing_db.testing import PostgresCluster

from .conftest import where

SECRET = "s3cret-pw"


def with_password(url: str) -> str:
    # Loopback trust: the password is accepted and must never show up.
    return url.replace("postgres@", f"postgres:{SECRET}@", 1)


@pytest.fixture
async def measured(
    cluster: PostgresCluster,
) -> AsyncIterator[tuple[Router, CollectorRegistry, RouterMetrics]]:
    router = Router.from_urls(
        with_password(cluster.writer_url),
        [with_password(url) for url in cluster.replica_urls],
        monitor_interval=0.1,
    )
    registry = CollectorRegistry()
    metrics = register_metrics(router, registry)
    try:
        yield router, registry, metrics
    finally:
        metrics.unregister()
        await router.dispose()


def value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    sample = registry.get_sample_value(name, labels)
    return 0.0 if sample is None else sample


async def test_statements_waits_holds_and_gauges(
    measured: tuple[Router, CollectorRegistry, RouterMetrics],
    cluster: PostgresCluster,
) -> None:
    router, registry, _ = measured
    Session = routing_sessionmaker(router)
    writer = router.status()[0]["name"]
    served: dict[int, int] = {}
    for _ in range(6):
        async with Session() as session, read_only:
            port, _standby = await where(session)
            served[port] = served.get(port, 0) + 1
    async with Session() as session:
        await session.execute(text("SELECT 1"))

    for row in router.status()[1:]:
        port = int(row["name"].split(":")[1].split("/")[0])
        assert value(
            registry,
            "routing_db_statements_total",
            engine=row["name"],
            role="replica",
            reason="read_only",
        ) == served.get(port, 0)
    assert sum(served.values()) == 6
    assert (
        value(
            registry,
            "routing_db_statements_total",
            engine=writer,
            role="writer",
            reason="default",
        )
        == 1
    )
    checkouts = sum(
        value(registry, "routing_db_checkout_wait_seconds_count", engine=row["name"])
        for row in router.status()
    )
    holds = sum(
        value(registry, "routing_db_connection_hold_seconds_count", engine=row["name"])
        for row in router.status()
    )
    assert checkouts == 7 and holds == 7

    await router.start()
    await cluster.await_replicated()
    await router.poll()
    for row in router.status()[1:]:
        assert value(registry, "routing_db_replica_eligible", engine=row["name"]) == 1
        assert value(registry, "routing_db_replica_lag_bytes", engine=row["name"]) == 0
    assert value(registry, "routing_db_pool_size", engine=writer, role="writer") == 5
    exposition = generate_latest(registry).decode()
    assert SECRET not in exposition
    assert "routing_db_pool_checked_out" in exposition


async def test_ejections_fallbacks_and_reruns_are_counted(
    measured: tuple[Router, CollectorRegistry, RouterMetrics],
    faults: PostgresCluster,
) -> None:
    router, registry, _ = measured
    Session = routing_sessionmaker(router)
    faults.stop_replica(0)
    faults.stop_replica(1)
    async with Session() as session, read_only:
        assert (await where(session))[1] is False
    names = [row["name"] for row in router.status()]
    assert value(registry, "routing_db_replica_ejections_total", engine=names[1]) == 1
    assert value(registry, "routing_db_replica_ejections_total", engine=names[2]) == 1
    assert value(registry, "routing_db_writer_fallbacks_total", engine=names[0]) == 1
    assert (
        value(
            registry,
            "routing_db_statements_total",
            engine=names[0],
            role="writer",
            reason="fallback",
        )
        == 1
    )


async def test_engines_are_labelled_by_their_given_names(
    cluster: PostgresCluster,
) -> None:
    router = Router.from_urls(
        with_password(cluster.writer_url),
        [with_password(url) for url in cluster.replica_urls],
        writer_name="primary",
        replica_names=["eu-1", "eu-2"],
    )
    registry = CollectorRegistry()
    metrics = register_metrics(router, registry)
    try:
        Session = routing_sessionmaker(router)
        for _ in range(2):
            async with Session() as session, read_only:
                await where(session)
        exposed = generate_latest(registry).decode()
        for name in ("eu-1", "eu-2"):
            labels = {"engine": name, "role": "replica", "reason": "read_only"}
            assert value(registry, "routing_db_statements_total", **labels) == 1
        assert 'engine="primary"' in exposed
        assert "127.0.0.1" not in exposed and SECRET not in exposed
    finally:
        metrics.unregister()
        await router.dispose()


async def test_unregister_removes_everything(
    measured: tuple[Router, CollectorRegistry, RouterMetrics],
) -> None:
    router, registry, metrics = measured
    metrics.unregister()
    assert "routing_db_" not in generate_latest(registry).decode()
    again = register_metrics(router, registry)  # the names are free again
    again.unregister()
    again.unregister()  # idempotent, like the fixture's own call


async def test_metrics_served_by_a_fastapi_app_at_exactly_metrics(
    measured: tuple[Router, CollectorRegistry, RouterMetrics],
) -> None:
    """The documented way: a route, not a mount (a mount redirects /metrics)."""
    import httpx
    from fastapi import FastAPI, Response
    from prometheus_client import CONTENT_TYPE_LATEST

    _, registry, _ = measured
    app = FastAPI()

    @app.get("/metrics")
    def metrics_endpoint() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        response = await client.get("/metrics")
    assert response.status_code == 200
    assert "routing_db_pool_checked_out" in response.text
    assert SECRET not in response.text
