"""A misconfigured replica is loud: its cause in the log, said again while it
stays out, and one WARNING while every read goes to the writer (issue L)."""

from __future__ import annotations

import logging

import pytest
from sqlalchemy.engine import make_url

from routing_db import read_only, routing_sessionmaker
from routing_db._replicas import replica_set
from routing_db.testing import PostgresCluster

from .conftest import where
from .routers import RouterMaker
from .waiting import until

SECRET = "s3cret-pw"


def mistyped(url: str) -> str:
    """``url`` with a database name that does not exist, and a password."""
    wrong = make_url(url).set(database="postgress", password=SECRET)
    return wrong.render_as_string(hide_password=False)


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "routing_db" and r.levelno == logging.WARNING
    ]


async def test_a_mistyped_replica_url_says_why_and_keeps_saying_it(
    cluster: PostgresCluster,
    make_router: RouterMaker,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(replica_set, "SAY_AGAIN", 0.3)
    caplog.set_level(logging.WARNING, logger="routing_db")
    router = make_router(
        cluster.writer_url,
        [mistyped(url) for url in cluster.replica_urls],
        monitor_interval=0.1,
    )
    Session = routing_sessionmaker(router)
    async with router:
        for _ in range(3):  # every read served, by the writer (server-checked)
            async with Session() as session, read_only:
                assert (await where(session))[1] is False

        def said_again() -> bool:
            return any("still ejected" in m for m in warnings_of(caplog))

        await until(said_again, 10)
    logged = warnings_of(caplog)
    ejected = [m for m in logged if "ejected after a connection failure" in m]
    assert len(ejected) == 2, logged  # one per replica
    assert all('database "postgress" does not exist' in m for m in ejected)
    again = [m for m in logged if "still ejected" in m]
    assert again and all('"postgress" does not exist' in m for m in again)
    writer_only = [m for m in logged if "no replica can serve reads" in m]
    assert len(writer_only) == 1, logged  # once for the episode, not per read
    assert not any(m.startswith("routing_db") for m in logged)
    assert not any(SECRET in r.getMessage() for r in caplog.records)


async def test_a_replica_back_ends_the_writer_only_episode(
    cluster: PostgresCluster,
    faults: PostgresCluster,
    make_router: RouterMaker,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="routing_db")
    router = make_router(
        cluster.writer_url, cluster.replica_urls[:1], monitor_interval=0.1
    )
    Session = routing_sessionmaker(router)
    async with router:
        await faults.astop_replica(0)
        try:
            await until(lambda: bool(router.status()[1]["ejected"]), 20)
            for _ in range(3):  # every read on the writer: one WARNING
                async with Session() as session, read_only:
                    assert (await where(session))[1] is False
        finally:
            await faults.astart_replica(0)

        def back() -> bool:
            return any("serves reads again" in m for m in warnings_of(caplog))

        await until(back, 20)
        async with Session() as session, read_only:
            assert (await where(session))[1] is True
    assert sum("no replica can serve reads" in m for m in warnings_of(caplog)) == 1
