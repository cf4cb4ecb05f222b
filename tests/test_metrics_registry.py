"""Metrics that live with their router: registered again in one process
(an app started per test) and removed when the router is disposed."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("prometheus_client")
from prometheus_client import CollectorRegistry

from routing_db.metrics import register_metrics

from .routers import RouterMaker


def names(registry: CollectorRegistry) -> set[str]:
    return {metric.name for metric in registry.collect()}


def urls(path: Path) -> tuple[str, list[str]]:
    return (
        f"sqlite+aiosqlite:///{path}",
        [f"sqlite+aiosqlite:///file:{path}?mode=ro&uri=true"],
    )


async def test_a_second_router_registers_where_the_first_did(
    tmp_path: Path, make_router: RouterMaker
) -> None:
    registry = CollectorRegistry()
    first = make_router(*urls(tmp_path / "a.db"))
    second = make_router(*urls(tmp_path / "b.db"))
    register_metrics(first, registry)
    register_metrics(second, registry)  # no DuplicateTimeseries
    assert "routing_db_statements" in names(registry)
    status = [
        sample.labels["engine"]
        for metric in registry.collect()
        if metric.name == "routing_db_replica_eligible"
        for sample in metric.samples
    ]
    assert status and all("b.db" in engine for engine in status)


async def test_disposing_the_router_removes_its_metrics(
    tmp_path: Path, make_router: RouterMaker
) -> None:
    registry = CollectorRegistry()
    router = make_router(*urls(tmp_path / "a.db"))
    async with router:
        register_metrics(router, registry)
        assert "routing_db_statements" in names(registry)
    assert not {name for name in names(registry) if name.startswith("routing_db")}
    async with router:  # started again, as a lifespan does: registered again
        register_metrics(router, registry)
        assert "routing_db_statements" in names(registry)
