"""SQLModel's sessions with routing: ``exec()`` routed as ``execute()``, both
faces, real SQLModel models on the real cluster (server-checked)."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import func
from sqlmodel import Field, SQLModel, col, select

from routing_db import (
    ReadOnlyViolation,
    Router,
    SyncRouter,
    read_only,
    routing_sessionmaker,
    routing_sync_sessionmaker,
    use_writer,
)
from routing_db.asgi import DEFAULT_TOKEN_HEADER
from routing_db.sqlmodel import RoutingSession, RoutingSyncSession
from routing_db.testing import PostgresCluster

# Which server ran it, as a select exec() takes.
WHERE = select(func.inet_server_port(), func.pg_is_in_recovery())


class Hero(SQLModel, table=True):
    __tablename__ = "sqlmodel_heroes"
    id: int | None = Field(default=None, primary_key=True)
    name: str


@pytest.fixture
def heroes(schema: PostgresCluster) -> Iterator[PostgresCluster]:
    """The cluster with an empty heroes table, replicated."""
    schema.sql(
        schema.primary,
        "CREATE TABLE IF NOT EXISTS sqlmodel_heroes (id serial PRIMARY KEY, "
        "name varchar NOT NULL); TRUNCATE sqlmodel_heroes RESTART IDENTITY",
    )
    schema.wait_replicated()
    yield schema


async def test_async_exec_routes_like_execute(heroes: PostgresCluster) -> None:
    replicas = {node.port for node in heroes.replicas}
    async with Router.from_urls(heroes.writer_url, heroes.replica_urls) as router:
        Session = routing_sessionmaker(router, class_=RoutingSession)
        async with Session() as session:
            assert isinstance(session, RoutingSession)
            session.add(Hero(name="Deadpond"))
            await session.commit()
            assert tuple((await session.exec(WHERE)).one()) == (
                heroes.primary.port,
                False,
            )
        heroes.wait_replicated()

        async def read() -> tuple[list[str], tuple[int, bool]]:
            async with Session() as session, read_only:
                found = (await session.exec(select(Hero))).all()  # typed: Hero
                names = [hero.name for hero in found]
                port, standby = (await session.exec(WHERE)).one()
                async with use_writer:
                    writer = (await session.exec(WHERE)).one()
                    assert tuple(writer) == (heroes.primary.port, False)
                with pytest.raises(ReadOnlyViolation):
                    session.add(Hero(name="never"))
                    await session.flush()
                return names, (port, standby)

        for _ in range(2):
            names, (port, standby) = await read()
            assert names == ["Deadpond"]
            assert standby and port in replicas


def test_sync_exec_routes_like_execute(heroes: PostgresCluster) -> None:
    cluster = heroes.with_driver("psycopg2")
    replicas = {node.port for node in cluster.replicas}
    with SyncRouter.from_urls(cluster.writer_url, cluster.replica_urls) as router:
        Session = routing_sync_sessionmaker(router, class_=RoutingSyncSession)
        with Session() as session:
            session.add(Hero(name="Rusty-Man"))
            session.commit()
        cluster.wait_replicated()
        with Session() as session, read_only:
            assert isinstance(session, RoutingSyncSession)
            found = session.exec(select(Hero).where(col(Hero.name) == "Rusty-Man"))
            assert [hero.name for hero in found] == ["Rusty-Man"]
            port, standby = session.exec(WHERE).one()
            assert standby and port in replicas


async def test_the_sqlmodel_fastapi_example_runs(
    heroes: PostgresCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = Path(__file__).parent.parent / "examples" / "sqlmodel_app.py"
    monkeypatch.setenv("ROUTING_DB_WRITER_URL", heroes.writer_url)
    monkeypatch.setenv("ROUTING_DB_REPLICA_URLS", ",".join(heroes.replica_urls))
    heroes.sql(heroes.primary, "DROP TABLE IF EXISTS routing_db_demo_heroes")
    spec = importlib.util.spec_from_file_location("sqlmodel_example", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # Registered, so SQLAlchemy can resolve the models' annotations.
    monkeypatch.setitem(sys.modules, "sqlmodel_example", module)
    spec.loader.exec_module(module)
    app: FastAPI = module.app
    try:
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://test"
            ) as client,
        ):
            await heroes.await_replicated()  # the table, on the replicas
            for index in range(len(heroes.replicas)):
                heroes.pause_replay(index)
            created = await client.post("/heroes", json={"name": "Spider-Boy"})
            assert created.status_code == 201
            token = created.headers[DEFAULT_TOKEN_HEADER]
            mine = await client.get("/heroes", headers={DEFAULT_TOKEN_HEADER: token})
            theirs = await client.get("/heroes")
    finally:
        for index in range(len(heroes.replicas)):
            heroes.resume_replay(index)
    assert mine.json() == {
        "heroes": ["Spider-Boy"],
        "served_by_port": heroes.primary.port,
    }
    assert theirs.json()["heroes"] == []  # a replica, which has not replayed it
    assert theirs.json()["served_by_port"] in {n.port for n in heroes.replicas}
