"""One "pod" for the cross-process tests: a Router with a Redis causal store,
driven by lines on stdin, answering one JSON line each.

    python -m tests.redis_pod WRITER_URL REPLICA_URLS REDIS_URL
    > write KEY VALUE      -> {"ok": true}
    > read KEY VALUE       -> {"found": bool, "port": int, "standby": bool}
"""

from __future__ import annotations

import asyncio
import json
import sys

from sqlalchemy import text

from routing_db import Router, causal_key, read_only, routing_sessionmaker
from routing_db.redis import RedisCausalStore

INSERT = text("INSERT INTO redis_pod_rows (v) VALUES (:v)")
FIND = text(
    "SELECT count(*) > 0, inet_server_port(), pg_is_in_recovery() "
    "FROM redis_pod_rows WHERE v = :v"
)


async def main(writer: str, replicas: str, redis_url: str) -> None:
    store = RedisCausalStore(redis_url, ttl=30)
    router = Router.from_urls(writer, replicas.split(","), causal_store=store)
    Session = routing_sessionmaker(router)
    loop = asyncio.get_running_loop()
    async with router:
        print(json.dumps({"ready": True}), flush=True)
        while line := await loop.run_in_executor(None, sys.stdin.readline):
            command, key, value = line.split()
            # Each command is a request of its own: nothing carried over but
            # what the store holds for the key.
            if command == "write":
                await asyncio.create_task(write(Session, key, value))
                print(json.dumps({"ok": True}), flush=True)
            else:
                found, port, standby = await asyncio.create_task(
                    read(Session, key, value)
                )
                answer = {"found": found, "port": port, "standby": standby}
                print(json.dumps(answer), flush=True)


async def write(Session: object, key: str, value: str) -> None:
    async with causal_key(key), Session() as session:  # type: ignore[operator]
        await session.execute(INSERT, {"v": value})
        await session.commit()


async def read(Session: object, key: str, value: str) -> tuple[bool, int, bool]:
    async with causal_key(key), Session() as session, read_only:  # type: ignore[operator]
        found, port, standby = (await session.execute(FIND, {"v": value})).one()
        return bool(found), int(port), bool(standby)


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:4]))
