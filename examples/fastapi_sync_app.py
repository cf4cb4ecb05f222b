"""A FastAPI app with ``def`` endpoints on a ``SyncRouter``: GETs read from
replicas, writes carry a token. FastAPI runs the endpoints in its thread pool.

Run it against your primary and replicas, with a sync driver:

    ROUTING_DB_WRITER_URL=postgresql+psycopg://app:...@primary/app \\
    ROUTING_DB_REPLICA_URLS=postgresql+psycopg://app:...@replica1/app \\
    python examples/fastapi_sync_app.py     # or: uvicorn examples.fastapi_sync_app:app

A POST answers with an ``x-routing-db-token`` header; send it back on the next
request and that request reads the write, whichever replica is behind.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, FastAPI
from sqlalchemy import String, select, text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from routing_db import RoutingSyncSession, use_writer
from routing_db.fastapi import RoutingMiddleware, get_db, routing_lifespan


class Base(DeclarativeBase):
    pass


class Note(Base):
    __tablename__ = "routing_db_demo_sync_notes"
    id: Mapped[int] = mapped_column(primary_key=True)
    body: Mapped[str] = mapped_column(String(200))


Db = Annotated[RoutingSyncSession, Depends(get_db)]

# A SyncRouter from ROUTING_DB_* (SyncRoutingSettings); sessions keep loaded
# values after commit.
app = FastAPI(lifespan=routing_lifespan(sync=True, expire_on_commit=False))
# GET/HEAD/OPTIONS run under read_only (replicas); the token travels in a
# header. A def endpoint's commit reaches the response's token: the thread
# it runs in shares the request's causal floor.
app.add_middleware(RoutingMiddleware, roles_by_method=True)


@app.post("/setup")
def setup(db: Db) -> dict[str, str]:
    with use_writer:
        Base.metadata.create_all(db.connection())
        db.commit()
    return {"status": "ready"}


@app.post("/notes")
def add_note(body: str, db: Db) -> dict[str, Any]:
    note = Note(body=body)
    db.add(note)
    db.commit()
    return {"id": note.id}


@app.get("/notes")
def list_notes(db: Db) -> dict[str, Any]:
    notes = db.scalars(select(Note).order_by(Note.id)).all()
    server = db.execute(text("SELECT inet_server_port()")).scalar_one()
    return {"notes": [n.body for n in notes], "served_by_port": server}


if __name__ == "__main__":
    import uvicorn

    uvicorn.run(app, host="127.0.0.1", port=8000)
