"""A Flask app on routing_db's sync face: GETs read from replicas, writes carry a token.

Run it against your primary and replicas (sync drivers):

    ROUTING_DB_WRITER_URL=postgresql+psycopg2://app:...@primary/app \\
    ROUTING_DB_REPLICA_URLS=postgresql+psycopg2://app:...@replica1/app \\
    python examples/flask_app.py        # or: gunicorn 'examples.flask_app:main()'

A POST answers with an ``x-routing-db-token`` header; send it back on the next
request and that request reads the write, whichever replica is behind.
"""

from __future__ import annotations

import atexit
from typing import Any

from flask import Flask, request
from sqlalchemy import String, select, text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from routing_db import SyncRouter, routing_sync_sessionmaker
from routing_db.wsgi import RoutingMiddleware


class Base(DeclarativeBase):
    pass


class Note(Base):
    __tablename__ = "routing_db_demo_notes"
    id: Mapped[int] = mapped_column(primary_key=True)
    body: Mapped[str] = mapped_column(String(200))


WHERE = text("SELECT inet_server_port(), pg_is_in_recovery()")


def create_app(router: SyncRouter) -> Flask:
    """The app, routing with ``router`` (one for the process's lifetime)."""
    app = Flask(__name__)
    Session = routing_sync_sessionmaker(router, expire_on_commit=False)
    # GET/HEAD/OPTIONS run under read_only (replicas); the token travels in a
    # header (add cookie="routing_db" for browsers).
    app.wsgi_app = RoutingMiddleware(app.wsgi_app, roles_by_method=True)  # type: ignore[method-assign]

    @app.post("/notes")
    def add_note() -> tuple[dict[str, Any], int]:
        with Session() as session:
            note = Note(body=request.get_json()["body"])
            session.add(note)
            session.commit()
            return {"id": note.id}, 201

    @app.get("/notes")
    def list_notes() -> dict[str, Any]:
        with Session() as session:
            bodies = list(session.scalars(select(Note.body).order_by(Note.id)))
            port, standby = session.execute(WHERE).one()  # asked of the server
            return {"notes": bodies, "served_by": {"port": port, "standby": standby}}

    return app


def main() -> Flask:
    """The app with a router from ROUTING_DB_*, its tables made, started."""
    router = SyncRouter.from_settings()
    Base.metadata.create_all(router.writer)
    router.start()  # the monitor thread: lag, health
    atexit.register(router.dispose)
    return create_app(router)


if __name__ == "__main__":
    main().run(port=8000)
