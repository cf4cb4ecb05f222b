"""Read-your-writes across processes through a real redis-server: positions
kept per application key, atomically, and never a stale read when Redis is
down. Which server served a read is asked of the server."""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import os
import random
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Annotated, Any

import httpx
import pytest
import redis
from fastapi import Depends, FastAPI
from sqlalchemy import text

from routing_db import (
    Router,
    RoutingSession,
    RoutingSettings,
    SyncRouter,
    causal_key,
    read_only,
    routing_sessionmaker,
    routing_sync_sessionmaker,
)
from routing_db._causal.floor import CausalFloor
from routing_db.fastapi import RoutingMiddleware, get_db, routing_lifespan
from routing_db.redis import RedisCausalStore
from routing_db.testing import PostgresCluster, RedisServer

FIND = text(
    "SELECT count(*) > 0, inet_server_port(), pg_is_in_recovery() "
    "FROM redis_pod_rows WHERE v = :v"
)
INSERT = text("INSERT INTO redis_pod_rows (v) VALUES (:v)")
ROOT = Path(__file__).parent.parent
Db = Annotated[RoutingSession, Depends(get_db)]


def settled(server: RedisServer, prefix: str = "routing_db:") -> None:
    """The store began keeping positions long ago (see RedisCausalStore.load)."""
    client = redis.Redis.from_url(server.url)
    client.flushall()
    seconds, _ = client.time()
    client.set(f"{prefix}born", seconds - 3600)


@pytest.fixture
def rows(
    schema: PostgresCluster, redis_server: RedisServer
) -> Iterator[PostgresCluster]:
    """The cluster with an empty table; replay paused on every replica during
    the test: no replica ever has a write made in it."""
    schema.sql(
        schema.primary,
        "CREATE TABLE IF NOT EXISTS redis_pod_rows (v text); TRUNCATE redis_pod_rows",
    )
    schema.wait_replicated()
    settled(redis_server)
    for index in range(len(schema.replicas)):
        schema.pause_replay(index)
    try:
        yield schema
    finally:
        for index in range(len(schema.replicas)):
            schema.resume_replay(index)
        if redis_server._process is None:  # a test stopped it
            redis_server.start_again()


class Pod:
    """A router in a process of its own (tests/redis_pod.py)."""

    def __init__(self, cluster: PostgresCluster, server: RedisServer) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.redis_pod", cluster.writer_url,
             ",".join(cluster.replica_urls), server.url],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
            cwd=ROOT,
        )  # fmt: skip
        assert self.ask_line() == {"ready": True}

    def ask_line(self) -> Any:
        stdout: IO[str] | None = self.process.stdout
        assert stdout is not None
        line = stdout.readline()
        assert line, "the pod ended"
        return json.loads(line)

    def ask(self, *words: str) -> Any:
        stdin = self.process.stdin
        assert stdin is not None
        stdin.write(" ".join(words) + "\n")
        stdin.flush()
        return self.ask_line()

    def close(self) -> None:
        stdin = self.process.stdin
        assert stdin is not None
        stdin.close()
        self.process.wait(timeout=30)


def test_a_write_in_one_process_is_read_in_another_by_key(
    rows: PostgresCluster, redis_server: RedisServer
) -> None:
    one, two = Pod(rows, redis_server), Pod(rows, redis_server)
    try:
        stale, served = 0, set()
        for n in range(20):
            user = f"user-{n % 3}"
            assert one.ask("write", user, f"v{n}") == {"ok": True}
            seen = two.ask("read", user, f"v{n}")
            stale += not seen["found"]
            served.add((seen["port"], seen["standby"]))
        # The control: another user's read in the same process is served by
        # a replica, which has replayed nothing (the store did the work).
        other = two.ask("read", "someone-else", "v0")
    finally:
        one.close()
        two.close()
    assert stale == 0
    assert served == {(rows.primary.port, False)}
    assert other["standby"] is True and other["found"] is False


def test_racing_writers_never_lower_the_stored_position(
    redis_server: RedisServer,
) -> None:
    settled(redis_server)
    store = RedisCausalStore(redis_server.url)
    positions = list(range(1, 401))
    random.Random(7).shuffle(positions)
    chunks = [positions[i::8] for i in range(8)]

    def save(chunk: list[int]) -> None:
        for lsn in chunk:
            store.save("racy", CausalFloor(lsn))

    threads = [threading.Thread(target=save, args=(chunk,)) for chunk in chunks]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    stored = store.load("racy")
    assert stored is not None and stored.lsn == 400
    store.save("racy", CausalFloor(5))  # an older, slower save arrives last
    stored = store.load("racy")
    assert stored is not None and stored.lsn == 400
    # Positions beyond a Lua number's precision (a MariaDB GTID in domain 1).
    big = (1 << 64) | 12
    store.save("gtid", CausalFloor(big, server=2))
    store.save("gtid", CausalFloor(big - 1, server=3))
    stored = store.load("gtid")
    assert stored is not None and (stored.lsn, stored.server) == (big, 2)


async def test_redis_down_reads_go_to_the_writer_and_none_fails(
    rows: PostgresCluster, redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    store = RedisCausalStore(redis_server.url, ttl=1.0)
    router = Router.from_urls(rows.writer_url, rows.replica_urls, causal_store=store)
    Session = routing_sessionmaker(router)

    async def write_then_read(key: str, value: str) -> tuple[bool, bool]:
        async with causal_key(key), Session() as session:
            await session.execute(INSERT, {"v": value})
            await session.commit()

        async def elsewhere() -> tuple[bool, bool]:  # another request, same user
            async with causal_key(key), Session() as session, read_only:
                found, _, standby = (await session.execute(FIND, {"v": value})).one()
                return bool(found), bool(standby)

        return await asyncio.create_task(elsewhere(), context=contextvars.Context())

    caplog.set_level(logging.WARNING, logger="routing_db")
    async with router:
        assert await write_then_read("u", "before") == (True, False)
        redis_server.stop()
        results = [await write_then_read("u", f"down{n}") for n in range(10)]
        assert results == [(True, False)] * 10  # never stale, none failed
        down = [r for r in caplog.records if "cannot be reached" in r.getMessage()]
        assert len(down) == 1  # logged once per outage
        redis_server.start_again()
        settled(redis_server)

        def back() -> bool:
            return any("answers again" in r.getMessage() for r in caplog.records)

        deadline = time.monotonic() + 10
        n = 0
        while not back():  # the store is asked again a second after a failure
            assert time.monotonic() < deadline
            assert await write_then_read("u", f"back{n}") == (True, False)
            n += 1
            await asyncio.sleep(0.1)


async def test_fastapi_and_a_sync_job_read_what_the_user_wrote(
    rows: PostgresCluster, redis_server: RedisServer
) -> None:
    """No token travels: the user's key finds the write, in a request through
    get_db, one through the middleware, and a sync job (another router)."""
    store = RedisCausalStore(redis_server.url)
    router = Router.from_urls(rows.writer_url, rows.replica_urls, causal_store=store)

    def user(request: Any) -> str:
        return str(request.headers["x-user"])

    app = FastAPI(lifespan=routing_lifespan(router=router, causal_key=user))
    app.add_middleware(RoutingMiddleware, causal_key=user, roles_by_method=True)

    @app.post("/rows/{value}")
    async def add(value: str, db: Db) -> dict[str, str]:
        await db.execute(INSERT, {"v": value})
        await db.commit()
        return {"added": value}

    @app.get("/rows/{value}")
    async def find(value: str, db: Db) -> dict[str, Any]:
        found, _, standby = (await db.execute(FIND, {"v": value})).one()
        return {"found": found, "standby": standby}

    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://test"
        ) as client,
    ):
        posted = await client.post("/rows/ann-1", headers={"x-user": "ann"})
        assert posted.status_code == 200
        mine = await client.get("/rows/ann-1", headers={"x-user": "ann"})
        theirs = await client.get("/rows/ann-1", headers={"x-user": "bob"})
    assert mine.json() == {"found": True, "standby": False}
    assert theirs.json() == {"found": False, "standby": True}  # a replica

    sync = rows.with_driver("psycopg2")
    job_router = SyncRouter.from_urls(
        sync.writer_url, sync.replica_urls, causal_store=store
    )
    with job_router:
        Jobs = routing_sync_sessionmaker(job_router)

        @causal_key("ann")
        def job() -> tuple[bool, bool]:
            with Jobs() as session, read_only:
                found, _, standby = session.execute(FIND, {"v": "ann-1"}).one()
                return bool(found), bool(standby)

        assert contextvars.Context().run(job) == (True, False)


def test_the_two_pods_example_runs(
    rows: PostgresCluster, redis_server: RedisServer
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROUTING_DB_")}
    env["ROUTING_DB_WRITER_URL"] = rows.writer_url
    env["ROUTING_DB_REPLICA_URLS"] = ",".join(rows.replica_urls)
    env["ROUTING_DB_REDIS_URL"] = redis_server.url
    rows.sql(rows.primary, "DROP TABLE IF EXISTS redis_demo_notes")
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "redis_two_pods.py")],
        capture_output=True, text=True, env=env, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    # Replay is paused: only the writer has the row, and pod two finds it.
    assert "reads 1 row(s)" in done.stdout and "served by the writer" in done.stdout


async def test_the_store_from_settings(
    rows: PostgresCluster, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = "s3cr3t-store"
    settings = RoutingSettings(
        writer_url=rows.writer_url,
        causal_store_url=f"redis://:{secret}@127.0.0.1:1/0",
        causal_store_ttl=5,
    )
    assert secret not in repr(settings)
    store = settings.router_kwargs()["router_options"]["causal_store"]
    assert isinstance(store, RedisCausalStore) and store.ttl == 5
    assert secret not in repr(store)

    monkeypatch.setenv("ROUTING_DB_WRITER_URL", rows.writer_url)
    monkeypatch.setenv("ROUTING_DB_REPLICA_URLS", ",".join(rows.replica_urls))
    monkeypatch.setenv("ROUTING_DB_CAUSAL_STORE_URL", redis_server.url)
    async with Router.from_settings() as router:
        Session = routing_sessionmaker(router)
        async with causal_key("cy"), Session() as session:
            await session.execute(INSERT, {"v": "cy-1"})
            await session.commit()

        async def later() -> tuple[bool, bool]:
            async with causal_key("cy"), Session() as session, read_only:
                found, _, standby = (await session.execute(FIND, {"v": "cy-1"})).one()
                return bool(found), bool(standby)

        assert await asyncio.create_task(later(), context=contextvars.Context()) == (
            True,
            False,
        )
    # Kept per cluster: the key names the cluster written to.
    client = redis.Redis.from_url(redis_server.url)
    system_id = rows.sql(
        rows.primary, "SELECT system_identifier FROM pg_control_system()"
    )
    assert client.keys("routing_db:cy*") == [f"routing_db:cy@{system_id}".encode()]
    stored = client.hgetall(f"routing_db:cy@{system_id}")
    assert stored and int(stored[b"lsn"]) > 0
