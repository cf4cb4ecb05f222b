"""routing_db from sync code (a script, a Celery/RQ job): write, then read.

With no environment it needs no server: SQLite, the writer a file and the
"replica" the same file opened read-only. With ROUTING_DB_WRITER_URL /
ROUTING_DB_REPLICA_URLS set (sync drivers: postgresql+psycopg2://...), it
runs against them.
"""

from __future__ import annotations

import contextvars
import os
import tempfile

from sqlalchemy import String, select, text
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from routing_db import (
    ReadOnlyViolation,
    SyncRouter,
    read_only,
    routing_sync_sessionmaker,
)


class Base(DeclarativeBase):
    pass


class Job(Base):
    __tablename__ = "sync_demo_jobs"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100))


def make_router(workdir: str) -> SyncRouter:
    if os.environ.get("ROUTING_DB_WRITER_URL"):
        return SyncRouter.from_settings()
    path = os.path.join(workdir, "demo.db")
    return SyncRouter.from_urls(
        f"sqlite:///{path}", [f"sqlite:///file:{path}?mode=ro&uri=true"]
    )


def served_by(session: Session) -> str:
    """Ask the database itself which kind of connection ran the statement."""
    if session.get_bind().dialect.name == "postgresql":
        standby = session.scalar(text("SELECT pg_is_in_recovery()"))
        return "replica" if standby else "writer"
    if session.get_bind().dialect.name == "sqlite":
        query_only = session.scalar(text("SELECT query_only FROM pragma_query_only()"))
        return "replica" if query_only else "writer"
    read_only_server = session.scalar(text("SELECT @@global.read_only"))
    return "replica" if read_only_server else "writer"


def main(workdir: str) -> None:
    router = make_router(workdir)
    Base.metadata.create_all(router.writer)
    with router:  # the monitor thread runs until the block ends
        Session = routing_sync_sessionmaker(router, expire_on_commit=False)
        with Session() as session:
            session.add(Job(name="nightly report"))
            session.commit()
            print(f"write              -> {served_by(session)}")
        with Session() as session, read_only:
            names = session.scalars(select(Job.name)).all()
            print(
                f"read_only, same    -> {served_by(session)}: {names}  (read-your-"
                "writes: this context just wrote)"
            )

        def another_job() -> None:
            with Session() as session, read_only:
                names = session.scalars(select(Job.name)).all()
                print(f"read_only          -> {served_by(session)}: {names}")
                session.add(Job(name="not written"))
                try:
                    session.flush()
                except ReadOnlyViolation:
                    print("write in read_only -> ReadOnlyViolation, nothing sent")

        contextvars.Context().run(another_job)  # as a new job would start


if __name__ == "__main__":
    with tempfile.TemporaryDirectory(prefix="routing_db_sync_") as workdir:
        main(workdir)
