"""OpenTelemetry: routing decisions on the current span, read with the real
SDK's in-memory exporter; which server ran each statement is asked of it."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)
from sqlalchemy import Integer, column, select, table, text

from routing_db import Router, read_only, routing_sessionmaker
from routing_db.otel import instrument
from routing_db.testing import PostgresCluster

from .conftest import where

pytestmark = pytest.mark.usefixtures("clean")


class Spans:
    """A tracer whose finished spans are kept in memory."""

    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.tracer = provider.get_tracer("routing_db tests")

    def one(self, name: str) -> ReadableSpan:
        (span,) = [s for s in self.exporter.get_finished_spans() if s.name == name]
        return span


@pytest.fixture
def spans() -> Iterator[Spans]:
    yield Spans()


def routed_events(span: ReadableSpan) -> list[dict[str, Any]]:
    return [
        dict(e.attributes or {}) for e in span.events if e.name == "routing_db.routed"
    ]


def port_of(engine_name: str) -> int:
    """The port in a ``host:port/database`` engine label."""
    return int(engine_name.split("/")[0].rsplit(":", 1)[1])


async def test_each_statement_is_on_the_request_span(
    cluster: PostgresCluster, spans: Spans
) -> None:
    router = Router.from_urls(cluster.writer_url, cluster.replica_urls)
    instrument(router)
    Session = routing_sessionmaker(router)
    async with router:
        with spans.tracer.start_as_current_span("request"):
            async with Session() as session, read_only:
                replica_port, standby = await where(session)
            async with Session() as session:
                writer_port, primary_standby = await where(session)
        # Outside any span: nothing is recorded, nothing fails.
        async with Session() as session, read_only:
            await where(session)

    span = spans.one("request")
    first, second = routed_events(span)
    assert standby and not primary_standby  # asked of the servers
    assert first["routing_db.role"] == "replica"
    assert first["routing_db.reason"] == "read_only"
    assert port_of(first["routing_db.engine"]) == replica_port
    assert second["routing_db.role"] == "writer"
    assert port_of(second["routing_db.engine"]) == writer_port == cluster.primary.port
    # The span's attributes are the last decision's.
    assert span.attributes is not None
    assert span.attributes["routing_db.role"] == "writer"
    assert len(spans.exporter.get_finished_spans()) == 1


async def test_a_fallback_is_on_the_span(
    cluster: PostgresCluster, spans: Spans
) -> None:
    with socket.socket() as probe:  # a port nobody listens on: a dead replica
        probe.bind(("127.0.0.1", 0))
        dead = probe.getsockname()[1]
    dead_url = cluster.writer_url.replace(f":{cluster.primary.port}/", f":{dead}/")
    router = Router.from_urls(cluster.writer_url, [dead_url], connect_timeout=1.0)
    instrument(router)
    Session = routing_sessionmaker(router)
    async with router:  # its first round ejects the dead replica
        with spans.tracer.start_as_current_span("request"):
            async with Session() as session, read_only:
                port, _ = await where(session)
    span = spans.one("request")
    assert port == cluster.primary.port
    assert span.attributes is not None
    assert span.attributes["routing_db.fallback"] is True
    assert span.attributes["routing_db.role"] == "writer"
    assert span.attributes["routing_db.reason"] == "fallback"


async def test_a_rerun_statement_is_on_the_span(
    asyncpg_cluster: PostgresCluster, spans: Spans
) -> None:
    """A prepared statement made stale by DDL replayed from the primary runs
    again (asyncpg prepares every statement; one pooled connection)."""
    cluster = asyncpg_cluster
    cluster.sql(
        cluster.primary,
        "DROP TABLE IF EXISTS otel_probe; CREATE TABLE otel_probe (n int);"
        " INSERT INTO otel_probe VALUES (1)",
    )
    cluster.wait_replicated()
    query = select(table("otel_probe", column("n", Integer)).c.n)
    router = Router.from_urls(
        cluster.writer_url, cluster.replica_urls[:1], pool_size=1, max_overflow=0
    )
    instrument(router)
    Session = routing_sessionmaker(router)
    try:
        async with router:
            async with Session() as session, read_only:
                assert (await session.execute(query)).scalar_one() == 1
            cluster.sql(cluster.primary, "ALTER TABLE otel_probe ALTER n TYPE bigint")
            await cluster.await_replicated()
            with spans.tracer.start_as_current_span("request"):
                async with Session() as session, read_only:
                    assert (await session.execute(query)).scalar_one() == 1
                    assert (await session.execute(text("SELECT 1"))).scalar() == 1
    finally:
        cluster.sql(cluster.primary, "DROP TABLE IF EXISTS otel_probe")
    span = spans.one("request")
    assert span.attributes is not None
    assert span.attributes["routing_db.retry.kind"] == "stale_plan"
    assert span.attributes["routing_db.retry.outcome"] == "succeeded"
    assert [e.name for e in span.events].count("routing_db.retried") == 1
