"""A FastAPI app on routing_db: GETs read from replicas, writes carry a token.

Run it against your primary and replicas:

    ROUTING_DB_WRITER_URL=postgresql+asyncpg://app:...@primary/app \\
    ROUTING_DB_REPLICA_URLS=postgresql+asyncpg://app:...@replica1/app \\
    python examples/fastapi_app.py            # or: uvicorn examples.fastapi_app:app

A POST answers with an ``x-routing-db-token`` header; send it back on the next
request and that request reads the write, whichever replica is behind.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, FastAPI
from sqlalchemy import String, select, text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from routing_db import RoutingSession, use_writer
from routing_db.fastapi import RoutingMiddleware, get_db, routing_lifespan


class Base(DeclarativeBase):
    pass


class Note(Base):
    __tablename__ = "routing_db_demo_notes"
    id: Mapped[int] = mapped_column(primary_key=True)
    body: Mapped[str] = mapped_column(String(200))


Db = Annotated[RoutingSession, Depends(get_db)]

# Settings from ROUTING_DB_*; sessions keep loaded values after commit.
app = FastAPI(lifespan=routing_lifespan(expire_on_commit=False))
# GET/HEAD/OPTIONS run under read_only (replicas); the token travels in a
# header (add cookie="routing_db" for browsers).
app.add_middleware(RoutingMiddleware, roles_by_method=True)


@app.post("/setup")
async def setup(db: Db) -> dict[str, str]:
    async with use_writer:
        connection = await db.connection()
        await connection.run_sync(Base.metadata.create_all)
        await db.commit()
    return {"status": "ready"}


@app.post("/notes")
async def add_note(body: str, db: Db) -> dict[str, Any]:
    note = Note(body=body)
    db.add(note)
    await db.commit()
    return {"id": note.id}


@app.get("/notes")
async def list_notes(db: Db) -> dict[str, Any]:
    notes = (await db.scalars(select(Note).order_by(Note.id))).all()
    server = (await db.execute(text("SELECT inet_server_port()"))).scalar_one()
    return {"notes": [n.body for n in notes], "served_by_port": server}


if __name__ == "__main__":
    import uvicorn

    uvicorn.run(app, host="127.0.0.1", port=8000)
