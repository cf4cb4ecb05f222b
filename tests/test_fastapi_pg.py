"""FastAPI through httpx's ASGI transport, on the real cluster: lifespan,
get_db, roles by method and the causal token across requests."""

from __future__ import annotations

import contextlib
import importlib.util
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any

import httpx
import pytest
from fastapi import Depends, FastAPI, HTTPException
from sqlalchemy import select, text

from routing_db import Router, RoutingSession
from routing_db.fastapi import (
    DEFAULT_TOKEN_HEADER,
    RoutingMiddleware,
    get_db,
    routing_lifespan,
)
from routing_db.testing import PostgresCluster

from .models import Item

pytestmark = pytest.mark.usefixtures("clean")

Db = Annotated[RoutingSession, Depends(get_db)]
WHERE = text("SELECT inet_server_port(), pg_is_in_recovery()")


def make_app(cluster: PostgresCluster, **middleware: Any) -> FastAPI:
    router = Router.from_urls(cluster.writer_url, cluster.replica_urls)
    app = FastAPI(lifespan=routing_lifespan(router=router, expire_on_commit=False))
    app.add_middleware(RoutingMiddleware, roles_by_method=True, **middleware)

    @app.post("/items")
    async def create(name: str, db: Db) -> dict[str, Any]:
        item = Item(name=name)
        db.add(item)
        await db.commit()
        return {"id": item.id}

    @app.post("/broken")
    async def broken(name: str, db: Db) -> None:
        db.add(Item(name=name))
        await db.flush()
        raise HTTPException(status_code=500, detail="failed after a write")

    @app.get("/items/{item_id}")
    async def read(item_id: int, db: Db) -> dict[str, Any]:
        name = await db.scalar(select(Item.name).where(Item.id == item_id))
        port, standby = (await db.execute(WHERE)).one()
        if name is None:
            raise HTTPException(status_code=404, detail=f"not found on {port}")
        return {"name": name, "port": port, "standby": standby}

    @app.get("/where")
    async def where(db: Db) -> dict[str, Any]:
        port, standby = (await db.execute(WHERE)).one()
        return {"port": port, "standby": standby}

    return app


@pytest.fixture
async def client(cluster: PostgresCluster) -> AsyncIterator[httpx.AsyncClient]:
    app = make_app(cluster)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://test"
        ) as client,
    ):
        yield client


async def test_get_without_writes_is_served_by_a_replica(
    cluster: PostgresCluster, client: httpx.AsyncClient
) -> None:
    response = await client.get("/where")
    assert response.status_code == 200
    body = response.json()
    assert body["standby"] is True
    assert body["port"] in {node.port for node in cluster.replicas}
    assert DEFAULT_TOKEN_HEADER not in response.headers


async def test_the_token_carries_a_write_to_the_next_request(
    faults: PostgresCluster, client: httpx.AsyncClient
) -> None:
    for index in range(len(faults.replicas)):
        faults.pause_replay(index)
    created = await client.post("/items", params={"name": "fresh"})
    assert created.status_code == 200
    token = created.headers[DEFAULT_TOKEN_HEADER]
    item_id = created.json()["id"]
    # Without the token a replica serves, and it has not replayed the row.
    stale = await client.get(f"/items/{item_id}")
    assert stale.status_code == 404
    fresh = await client.get(f"/items/{item_id}", headers={DEFAULT_TOKEN_HEADER: token})
    assert fresh.status_code == 200
    assert fresh.json() == {
        "name": "fresh",
        "port": faults.primary.port,
        "standby": False,
    }


async def test_the_token_travels_in_a_cookie_too(faults: PostgresCluster) -> None:
    app = make_app(faults, cookie="routing_db")
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://test"
        ) as client,
    ):
        for index in range(len(faults.replicas)):
            faults.pause_replay(index)
        created = await client.post("/items", params={"name": "cookie"})
        assert "routing_db" in client.cookies
        read = await client.get(f"/items/{created.json()['id']}")
    assert read.status_code == 200
    assert read.json()["standby"] is False


async def test_an_error_rolls_the_request_back(
    cluster: PostgresCluster, client: httpx.AsyncClient
) -> None:
    response = await client.post("/broken", params={"name": "ghost"})
    assert response.status_code == 500
    assert DEFAULT_TOKEN_HEADER not in response.headers
    count = cluster.sql(cluster.primary, "SELECT count(*) FROM items")
    assert count == "0"


async def test_a_malformed_token_is_a_400(client: httpx.AsyncClient) -> None:
    response = await client.get("/where", headers={DEFAULT_TOKEN_HEADER: "pg:nope"})
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/json"
    assert DEFAULT_TOKEN_HEADER in response.json()["detail"]


@pytest.mark.parametrize(
    ("example", "driver"),
    [("fastapi_app", None), ("fastapi_sync_app", "psycopg")],
    ids=["async", "sync"],
)
async def test_the_example_app_runs(
    faults: PostgresCluster,
    monkeypatch: pytest.MonkeyPatch,
    example: str,
    driver: str | None,
) -> None:
    # The sync example: def endpoints on a SyncRouter, in FastAPI's threads.
    path = Path(__file__).parent.parent / "examples" / f"{example}.py"
    urls = faults if driver is None else faults.with_driver(driver)
    monkeypatch.setenv("ROUTING_DB_WRITER_URL", urls.writer_url)
    monkeypatch.setenv("ROUTING_DB_REPLICA_URLS", ",".join(urls.replica_urls))
    for table in ("routing_db_demo_notes", "routing_db_demo_sync_notes"):
        faults.sql(faults.primary, f"DROP TABLE IF EXISTS {table}")
    spec = importlib.util.spec_from_file_location("fastapi_example", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # Registered, so SQLAlchemy can resolve the models' annotations.
    monkeypatch.setitem(sys.modules, "fastapi_example", module)
    spec.loader.exec_module(module)
    app: FastAPI = module.app
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://test"
        ) as client,
    ):
        assert (await client.post("/setup")).status_code == 200
        await faults.await_replicated()
        for index in range(len(faults.replicas)):
            faults.pause_replay(index)
        created = await client.post("/notes", params={"body": "hello"})
        token = created.headers[DEFAULT_TOKEN_HEADER]
        listed = await client.get("/notes", headers={DEFAULT_TOKEN_HEADER: token})
        stale = await client.get("/notes")
    assert listed.json() == {"notes": ["hello"], "served_by_port": faults.primary.port}
    assert stale.json()["notes"] == []
    assert stale.json()["served_by_port"] in {n.port for n in faults.replicas}


async def test_the_applications_own_lifespan_runs_inside(
    cluster: PostgresCluster,
) -> None:
    seen: list[str] = []

    @contextlib.asynccontextmanager
    async def startup(app: FastAPI) -> AsyncIterator[None]:
        # The router is there already: the application's startup work can
        # use it (here: a query on the writer).
        router: Router = app.state.routing_router
        async with router.writer.connect() as connection:
            seen.append(f"up {await connection.scalar(text('SELECT 1'))}")
        yield
        seen.append("down")
        # Its engines are still open while the application shuts down.
        async with router.writer.connect() as connection:
            seen.append(f"still {await connection.scalar(text('SELECT 2'))}")

    router = Router.from_urls(cluster.writer_url, cluster.replica_urls)
    app = FastAPI(lifespan=routing_lifespan(router=router, lifespan=startup))
    async with app.router.lifespan_context(app):
        assert seen == ["up 1"]
    assert seen == ["up 1", "down", "still 2"]
