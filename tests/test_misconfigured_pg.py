"""A misconfigured replica is loud: its cause in the log, said again while it
stays out, and one WARNING while every read goes to the writer (issue L)."""

from __future__ import annotations

import logging

import pytest
from pydantic import ValidationError
from sqlalchemy.engine import make_url

from routing_db import (
    ConfigurationError,
    Router,
    RoutingSettings,
    read_only,
    routing_sessionmaker,
)
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


def start_up_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [m for m in warnings_of(caplog) if m.startswith("start-up check:")]


async def test_strict_refuses_to_start_and_lists_every_problem(
    cluster: PostgresCluster, make_router: RouterMaker
) -> None:
    # A mistyped database, a "replica" that is the primary, a port where
    # nothing listens: each named, with the driver's cause, no password.
    nothing = f"postgresql+{cluster.driver}://postgres:{SECRET}@127.0.0.1:1/postgres"
    router = make_router(
        cluster.writer_url,
        [mistyped(cluster.replica_urls[0]), cluster.writer_url, nothing],
        startup_check="strict",
    )
    with pytest.raises(ConfigurationError) as raised:
        async with router:
            pytest.fail("a router with these URLs must not start")
    message = str(raised.value)
    assert "3 problem(s)" in message
    assert 'database "postgress" does not exist' in message
    assert "it is not a standby (it takes writes)" in message
    assert message.count("cannot connect") == 2
    assert SECRET not in message
    with pytest.raises(ConfigurationError):  # it never started: checked again
        await router.start()


async def test_warn_starts_and_logs_each_problem_with_its_cause(
    cluster: PostgresCluster, make_router: RouterMaker, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="routing_db")
    router = make_router(
        cluster.writer_url, [mistyped(url) for url in cluster.replica_urls]
    )  # startup_check="warn", the default
    Session = routing_sessionmaker(router)
    async with router:
        async with Session() as session, read_only:  # served, by the writer
            assert (await where(session))[1] is False
        problems = await router.check()  # a readiness probe sees the same
    said = start_up_warnings(caplog)
    assert len(said) == 2 == len(problems), said
    assert all('database "postgress" does not exist' in m for m in said)
    # Later (a readiness probe), ejected replicas are named with their cause.
    assert all("ejected" in p.message and "postgress" in p.message for p in problems)
    assert not any(SECRET in r.getMessage() for r in caplog.records)


async def test_check_finds_nothing_wrong_with_a_sound_set_up_and_off_skips_it(
    cluster: PostgresCluster, make_router: RouterMaker, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="routing_db")
    sound = make_router(
        cluster.writer_url, cluster.replica_urls, startup_check="strict"
    )
    async with sound:
        assert await sound.check() == []
    skipped = make_router(
        cluster.writer_url, [mistyped(cluster.replica_urls[0])], startup_check="off"
    )
    async with skipped:
        pass
    assert start_up_warnings(caplog) == []


async def test_a_writer_url_that_reaches_a_standby_is_named(
    cluster: PostgresCluster, make_router: RouterMaker
) -> None:
    router = make_router(cluster.replica_urls[0], startup_check="off")
    async with router:
        (problem,) = await router.check()
    assert problem.role == "writer"
    assert "standby" in problem.message and "writer_url" in problem.message


def test_the_sync_face_checks_the_same_way(
    cluster: PostgresCluster, make_router: RouterMaker
) -> None:
    sync = cluster.with_driver("psycopg2")
    router = make_router.sync(
        sync.writer_url, [mistyped(sync.replica_urls[0])], startup_check="strict"
    )
    with pytest.raises(ConfigurationError, match='"postgress" does not exist'):
        router.start()
    (problem,) = router.check()
    assert problem.role == "replica" and SECRET not in str(problem)
    sound = make_router.sync(sync.writer_url, sync.replica_urls, startup_check="strict")
    with sound:
        assert sound.check() == []


def test_startup_check_takes_three_values_everywhere(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with pytest.raises(ConfigurationError, match="'warn', 'strict' or 'off'"):
        Router.from_urls("sqlite+aiosqlite://", startup_check="loud")
    monkeypatch.setenv("ROUTING_DB_WRITER_URL", "sqlite+aiosqlite://")
    monkeypatch.setenv("ROUTING_DB_STARTUP_CHECK", "strict")
    assert RoutingSettings().startup_check == "strict"
    monkeypatch.setenv("ROUTING_DB_STARTUP_CHECK", "loud")
    with pytest.raises(ValidationError):
        RoutingSettings()
