"""Read-your-writes across processes with no token: two "pods" share Redis.

Pod one writes under a user's key; pod two, another process, reads right
after under the same key and sees the write, however far behind the
replicas are. Needs PostgreSQL with replicas and Redis:

    ROUTING_DB_WRITER_URL=postgresql+asyncpg://app:...@primary/app \\
    ROUTING_DB_REPLICA_URLS=postgresql+asyncpg://app:...@replica1/app \\
    ROUTING_DB_REDIS_URL=redis://cache:6379/0 \\
    python examples/redis_two_pods.py
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os

from sqlalchemy import text

from routing_db import Router, causal_key, read_only, routing_sessionmaker
from routing_db.redis import RedisCausalStore

SETUP = text("CREATE TABLE IF NOT EXISTS redis_demo_notes (user_id text, body text)")
INSERT = text("INSERT INTO redis_demo_notes VALUES (:user, :body)")
FIND = text(
    "SELECT count(*), pg_is_in_recovery() FROM redis_demo_notes WHERE body = :body"
)


def make_router() -> Router:
    """Each pod's own router, on the shared store."""
    store = RedisCausalStore(os.environ["ROUTING_DB_REDIS_URL"])
    replicas = os.environ.get("ROUTING_DB_REPLICA_URLS", "")
    return Router.from_urls(
        os.environ["ROUTING_DB_WRITER_URL"],
        [url for url in replicas.split(",") if url],
        causal_store=store,
    )


async def pod_one(user: str, body: str) -> None:
    async with make_router() as router:
        Session = routing_sessionmaker(router)
        async with causal_key(user), Session() as session:
            await session.execute(INSERT, {"user": user, "body": body})
            await session.commit()
    print(f"pod one: {user} wrote {body!r}")


async def pod_two(user: str, body: str) -> None:
    async with make_router() as router:
        Session = routing_sessionmaker(router)
        async with causal_key(user), Session() as session, read_only:
            count, standby = (await session.execute(FIND, {"body": body})).one()
    where = "a replica" if standby else "the writer"
    print(f"pod two: {user} reads {count} row(s) with {body!r}, served by {where}")


def run(pod: object, *args: str) -> None:
    asyncio.run(pod(*args))  # type: ignore[operator]


def main() -> None:
    async def setup() -> None:
        async with make_router() as router, router.writer.begin() as connection:
            await connection.execute(SETUP)

    asyncio.run(setup())
    body = f"note {os.getpid()}"
    for pod in (pod_one, pod_two):  # one after the other, each a process
        process = multiprocessing.get_context("spawn").Process(
            target=run, args=(pod, "ann", body)
        )
        process.start()
        process.join()
        if process.exitcode != 0:
            raise SystemExit(f"{pod.__name__} failed")


if __name__ == "__main__":
    main()
