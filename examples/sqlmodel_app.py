"""A FastAPI app with SQLModel on routing_db: ``session.exec()`` routed.

Run it against your primary and replicas:

    ROUTING_DB_WRITER_URL=postgresql+asyncpg://app:...@primary/app \\
    ROUTING_DB_REPLICA_URLS=postgresql+asyncpg://app:...@replica1/app \\
    python examples/sqlmodel_app.py          # or: uvicorn examples.sqlmodel_app:app

GETs read on replicas; a POST answers with an ``x-routing-db-token`` header
that brings the next request back to what it wrote.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import Depends, FastAPI
from sqlalchemy import func
from sqlmodel import Field, SQLModel, col, select

from routing_db import Router, use_writer
from routing_db.fastapi import RoutingMiddleware, get_db, routing_lifespan
from routing_db.sqlmodel import RoutingSession


class Hero(SQLModel, table=True):
    __tablename__ = "routing_db_demo_heroes"
    id: int | None = Field(default=None, primary_key=True)
    name: str


class HeroIn(SQLModel):
    name: str


@contextlib.asynccontextmanager
async def create_tables(app: FastAPI) -> AsyncIterator[None]:
    router: Router = app.state.routing_router
    async with use_writer, router.writer.begin() as connection:
        await connection.run_sync(SQLModel.metadata.create_all)
    yield


# Settings from ROUTING_DB_*; SQLModel's AsyncSession, routed.
app = FastAPI(
    lifespan=routing_lifespan(
        class_=RoutingSession, expire_on_commit=False, lifespan=create_tables
    )
)
app.add_middleware(RoutingMiddleware, roles_by_method=True)  # GET -> read_only
Db = Annotated[RoutingSession, Depends(get_db)]


@app.post("/heroes", status_code=201)
async def add_hero(hero: HeroIn, db: Db) -> dict[str, Any]:
    row = Hero(name=hero.name)
    db.add(row)
    await db.commit()
    return {"id": row.id}


@app.get("/heroes")
async def list_heroes(db: Db) -> dict[str, Any]:
    heroes = (await db.exec(select(Hero).order_by(col(Hero.id)))).all()  # Hero rows
    port = (await db.exec(select(func.inet_server_port()))).one()  # who served
    return {"heroes": [h.name for h in heroes], "served_by_port": port}


if __name__ == "__main__":
    import uvicorn

    uvicorn.run(app, host="127.0.0.1", port=8000)
