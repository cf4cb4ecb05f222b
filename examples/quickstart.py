"""routing_db quickstart: routing, read-your-writes, use_writer, ReadOnlyViolation.

With no environment it needs no server: SQLite via aiosqlite, the writer is a
file and the "replica" is the same file opened read-only. With
ROUTING_DB_WRITER_URL / ROUTING_DB_REPLICA_URLS set it runs against them.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import os
import tempfile

from sqlalchemy import String, select, text
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from routing_db import (
    ReadOnlyViolation,
    Router,
    read_only,
    routing_sessionmaker,
    use_writer,
)


class Base(DeclarativeBase):
    pass


class Note(Base):
    __tablename__ = "quickstart_notes"
    id: Mapped[int] = mapped_column(primary_key=True)
    body: Mapped[str] = mapped_column(String(200))


def make_router(workdir: str) -> Router:
    if os.environ.get("ROUTING_DB_WRITER_URL"):
        return Router.from_settings()
    path = os.path.join(workdir, "demo.db")
    return Router.from_urls(
        f"sqlite+aiosqlite:///{path}",
        [f"sqlite+aiosqlite:///file:{path}?mode=ro&uri=true"],
    )


async def served_by(session: AsyncSession) -> str:
    """Ask the database itself which kind of connection ran the statement."""
    if session.get_bind().dialect.name == "postgresql":
        port, standby = (
            await session.execute(
                text("SELECT inet_server_port(), pg_is_in_recovery()")
            )
        ).one()
        return f"{'replica' if standby else 'writer'} (server port {port})"
    query_only = await session.scalar(
        text("SELECT query_only FROM pragma_query_only()")
    )
    return "replica (read-only connection)" if query_only else "writer"


async def main(workdir: str) -> None:
    router = make_router(workdir)
    async with router.writer.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
    # ``async with`` starts the health/lag monitor and disposes at the end.
    async with router:
        print(f"router: {router}")
        Session = routing_sessionmaker(router, expire_on_commit=False)

        async with Session() as session:
            session.add(Note(body="hello from the writer"))
            await session.commit()
            print(f"no flag            -> {await served_by(session)}")

        newest = select(Note.body).order_by(Note.id.desc()).limit(3)
        # Same context as the write: its reads must see it (read-your-writes),
        # so a replica serves only once it has replayed the commit.
        async with Session() as session, read_only:
            notes = (await session.scalars(newest)).all()
            print(
                f"read_only, same    -> {await served_by(session)}: {notes}"
                "  (read-your-writes: this context just wrote, so only a replica"
                " that has replayed that write may serve it, else the writer)"
            )

        async def another_request() -> None:
            async with Session() as session, read_only:
                notes = (await session.scalars(newest)).all()
                print(f"read_only          -> {await served_by(session)}: {notes}")

                async with use_writer:
                    print(f"use_writer inside  -> {await served_by(session)}")

                session.add(Note(body="this must not be written"))
                try:
                    await session.flush()
                except ReadOnlyViolation as exc:
                    print(f"write in read_only -> ReadOnlyViolation: {exc}")
                session.expunge_all()

        # A new context, as a new web request would have: it carries no write.
        await asyncio.create_task(another_request(), context=contextvars.Context())

        print("status:", json.dumps(router.status(), indent=1))


if __name__ == "__main__":
    with tempfile.TemporaryDirectory(prefix="routing_db_demo_") as workdir:
        asyncio.run(main(workdir))
