"""routing_db with OpenTelemetry: each routing decision on the request's span.

Needs ``pip install 'routing_db[otel,sqlite]' opentelemetry-sdk``. With no
environment it runs on SQLite (the "replica" is the writer's file opened
read-only); with ROUTING_DB_WRITER_URL / ROUTING_DB_REPLICA_URLS set, against
them. Spans go to the console exporter; a real service sends them to its
collector instead.
"""

from __future__ import annotations

import asyncio
import contextvars
import os
import tempfile

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor
from sqlalchemy import text

from routing_db import Router, read_only, routing_sessionmaker
from routing_db.otel import instrument


def make_router(workdir: str) -> Router:
    if os.environ.get("ROUTING_DB_WRITER_URL"):
        return Router.from_settings()
    path = os.path.join(workdir, "demo.db")
    return Router.from_urls(
        f"sqlite+aiosqlite:///{path}",
        [f"sqlite+aiosqlite:///file:{path}?mode=ro&uri=true"],
    )


async def main(workdir: str) -> None:
    provider = TracerProvider()
    provider.add_span_processor(
        SimpleSpanProcessor(ConsoleSpanExporter(formatter=lambda s: s.to_json() + "\n"))
    )
    trace.set_tracer_provider(provider)
    tracer = trace.get_tracer("routing_db example")

    router = make_router(workdir)
    async with router.writer.connect():
        pass  # SQLite: the writer creates the file the replica opens
    async with router:
        instrument(router)  # once, for the router's lifetime
        Session = routing_sessionmaker(router)

        async def request() -> None:
            # A web framework's instrumentation opens this span per request.
            with tracer.start_as_current_span("GET /notes"):
                async with Session() as session, read_only:
                    await session.execute(text("SELECT 1"))
                async with Session() as session:
                    await session.execute(text("SELECT 2"))

        await asyncio.create_task(request(), context=contextvars.Context())


if __name__ == "__main__":
    with tempfile.TemporaryDirectory(prefix="routing_db_tracing_") as workdir:
        asyncio.run(main(workdir))
