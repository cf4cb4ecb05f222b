"""The sync face on the real cluster: SyncRouter and routing_sync_sessionmaker
with psycopg2 and psycopg's sync connection, threads for concurrency.

Which server ran a statement is asked of the server itself.
"""

from __future__ import annotations

import contextvars
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from pydantic import ValidationError
from sqlalchemy import Engine, event, func, insert, select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from routing_db import (
    ConfigurationError,
    ReadOnlyViolation,
    RoutingSettings,
    RoutingSyncSession,
    SyncRouter,
    causal_token,
    current_causal_token,
    is_connection_error,
    is_transient_error,
    read_only,
    routing_sync_sessionmaker,
    unit_of_work,
    use_writer,
)
from routing_db.metrics import register_metrics
from routing_db.testing import PostgresCluster

from .conftest import WHERE, healed
from .models import Item
from .routers import RouterMaker

Maker = sessionmaker[RoutingSyncSession]


@pytest.fixture(params=["psycopg2", "psycopg"])
def sync_cluster(schema: PostgresCluster, request: pytest.FixtureRequest) -> Any:
    """The cluster's URLs for each sync PostgreSQL driver, its tables empty."""
    schema.sql(schema.primary, "TRUNCATE items, children, parents RESTART IDENTITY")
    schema.wait_replicated()
    return schema.with_driver(request.param)


@pytest.fixture
def faulty(sync_cluster: PostgresCluster) -> Iterator[PostgresCluster]:
    """The sync cluster for a test that injects faults; healed afterwards."""
    yield from healed(sync_cluster)


@pytest.fixture
def router(sync_cluster: PostgresCluster, make_router: RouterMaker) -> SyncRouter:
    router = make_router.sync(
        sync_cluster.writer_url,
        sync_cluster.replica_urls,
        pool_size=10,
        monitor_interval=0.2,
    )
    router.start()
    return router


@pytest.fixture
def Sync(router: SyncRouter) -> Maker:
    return routing_sync_sessionmaker(router, expire_on_commit=False)


def where(session: Session) -> tuple[int, bool]:
    port, standby = session.execute(WHERE).one()
    return int(port), bool(standby)


def fresh(fn: Callable[[], Any]) -> Any:
    """Run ``fn`` in a new context, as a new request (or thread) would."""
    return contextvars.Context().run(fn)


def test_reads_go_to_replicas_and_the_rest_to_the_writer(
    sync_cluster: PostgresCluster, Sync: Maker
) -> None:
    replicas = {node.port for node in sync_cluster.replicas}
    with Sync() as session:
        assert where(session) == (sync_cluster.primary.port, False)
    served = set()
    for _ in range(6):
        with Sync() as session, read_only:
            port, standby = where(session)
            assert standby and port in replicas
            served.add(port)
            with use_writer:
                assert where(session) == (sync_cluster.primary.port, False)
    assert served == replicas  # round robin over both


def test_a_write_under_read_only_is_refused_with_nothing_sent(
    router: SyncRouter, Sync: Maker
) -> None:
    sent: list[str] = []

    def record(*args: Any) -> None:
        sent.append(args[2])

    engines: list[Engine] = [router.writer, *router.replicas]
    for engine in engines:
        event.listen(engine, "before_cursor_execute", record)
    try:
        with Sync() as session, read_only:
            session.add(Item(name="never"))
            with pytest.raises(ReadOnlyViolation):
                session.flush()
            with pytest.raises(ReadOnlyViolation):
                session.execute(text("DELETE FROM items"))
            assert session.new  # the pending object is kept
    finally:
        for engine in engines:
            event.remove(engine, "before_cursor_execute", record)
    assert not [sql for sql in sent if "items" in sql.lower()]
    with Sync() as session:
        assert session.scalar(select(func.count()).select_from(Item)) == 0


@pytest.fixture
def paused(sync_cluster: PostgresCluster) -> Iterator[PostgresCluster]:
    """Replay paused on every replica; resumed after the test."""
    for index in range(len(sync_cluster.replicas)):
        sync_cluster.pause_replay(index)
    try:
        yield sync_cluster
    finally:
        for index in range(len(sync_cluster.replicas)):
            sync_cluster.resume_replay(index)


def test_read_your_writes_while_replicas_replay_nothing(
    paused: PostgresCluster, Sync: Maker
) -> None:
    def write_then_read() -> tuple[str | None, tuple[int, bool]]:
        with Sync() as session:
            session.add(Item(name="mine"))
            session.commit()
        with Sync() as session, read_only:
            name = session.scalar(select(Item.name))
            return name, where(session)

    name, served = fresh(write_then_read)
    # No replica has replayed the commit: the writer served, and saw it.
    assert name == "mine"
    assert served == (paused.primary.port, False)

    def someone_else() -> tuple[str | None, tuple[int, bool]]:
        with Sync() as session, read_only:
            return session.scalar(select(Item.name)), where(session)

    other_name, other = fresh(someone_else)
    assert other[1] is True  # a context with no write reads on a replica
    assert other_name is None  # which has not replayed it: that is allowed


AUTOCOMMIT = {"isolation_level": "AUTOCOMMIT"}


def write_without_routing_commit(form: str, router: SyncRouter, Sync: Maker) -> None:
    """Write a row named "plain" on the writer in one of the ways that no
    routing session commits."""
    row = insert(Item).values(name="plain")
    if form == "Session":
        with Session(router.writer) as session:
            session.add(Item(name="plain"))
            session.commit()
    elif form == "engine.begin":
        with router.writer.begin() as connection:
            connection.execute(row)
    # In AUTOCOMMIT each statement commits on its own: no commit() is called.
    elif form == "autocommit Session":
        with Session(router.writer.execution_options(**AUTOCOMMIT)) as session:
            session.execute(row)
    elif form == "autocommit connection":
        with router.writer.connect() as connection:
            connection.execution_options(**AUTOCOMMIT)
            connection.execute(row)
    else:
        with Sync() as session:
            session.connection(execution_options=AUTOCOMMIT)
            session.execute(row)


@pytest.mark.parametrize(
    "form",
    [
        "Session",
        "engine.begin",
        "autocommit Session",
        "autocommit connection",
        "autocommit routing session",
    ],
)
def test_a_write_outside_a_routing_commit_gives_read_your_writes(
    paused: PostgresCluster, Sync: Maker, router: SyncRouter, form: str
) -> None:
    # Recorded as a routing session's commit is: the context's token.
    def write() -> str | None:
        write_without_routing_commit(form, router, Sync)
        return current_causal_token()

    def read(token: str | None) -> tuple[str | None, tuple[int, bool]]:
        with causal_token(token), Sync() as session, read_only:
            return session.scalar(select(Item.name)), where(session)

    token = fresh(write)
    assert token is not None and token.startswith("pg:")
    # Replay is paused: only the writer has the row, and serves the read.
    served = contextvars.Context().run(read, token)
    assert served == ("plain", (paused.primary.port, False))


def test_drop_in_same_results_and_same_sql_on_the_writer(
    sync_cluster: PostgresCluster, Sync: Maker, router: SyncRouter
) -> None:
    def workload(session: Session) -> list[Any]:
        session.add_all([Item(name="a"), Item(name="b")])
        session.flush()
        first = session.scalars(select(Item.name).order_by(Item.name)).all()
        session.execute(text("UPDATE items SET name = 'c' WHERE name = 'a'"))
        session.commit()
        return [
            list(first),
            session.scalars(select(Item.name).order_by(Item.name)).all(),
        ]

    def logged(engine: Engine, run: Callable[[], list[Any]]) -> tuple[Any, list[str]]:
        sent: list[str] = []
        me = threading.current_thread()  # not the monitor's checks

        def record(*args: Any) -> None:
            if threading.current_thread() is me:
                sent.append(args[2])

        event.listen(engine, "before_cursor_execute", record)
        try:
            return run(), sent
        finally:
            event.remove(engine, "before_cursor_execute", record)

    def routed() -> list[Any]:
        with Sync() as session:
            return workload(session)

    routed_result, routed_sql = logged(router.writer, routed)
    sync_cluster.sql(sync_cluster.primary, "TRUNCATE items RESTART IDENTITY")
    plain_engine = router.writer  # the same URL and pool settings
    with sessionmaker(plain_engine, expire_on_commit=False)() as session:
        plain_result, plain_sql = logged(plain_engine, lambda: workload(session))
    assert routed_result == plain_result == [["a", "b"], ["b", "c"]]
    assert routed_sql == plain_sql


def test_a_crashed_replica_fails_no_read_under_threads(
    faulty: PostgresCluster, router: SyncRouter, Sync: Maker
) -> None:
    errors: list[BaseException] = []
    served: dict[int, int] = {}
    stop = threading.Event()
    lock = threading.Lock()

    def read() -> None:
        while not stop.is_set():
            try:
                with Sync() as session, read_only:
                    port, _ = where(session)
            except Exception as exc:  # counted: the test wants none
                with lock:
                    errors.append(exc)
                continue
            with lock:
                served[port] = served.get(port, 0) + 1

    readers = [threading.Thread(target=read) for _ in range(20)]
    for thread in readers:
        thread.start()
    dead = faulty.replicas[0].port
    try:
        time.sleep(0.3)  # load under way before the fault (not a wait for state)
        faulty.crash_replica(0)
        crashed_at = sum(served.values())
        deadline = time.monotonic() + 10
        while sum(served.values()) < crashed_at + 200:
            assert time.monotonic() < deadline, "reads stopped"
            time.sleep(0.05)
        ejected = {row["name"]: row["state"] for row in router.status()}
        assert "ejected" in ejected.values()
        before = served.get(dead, 0)
        faulty.start_replica(0)
        deadline = time.monotonic() + 10
        while served.get(dead, 0) <= before:  # re-admitted by the monitor
            assert time.monotonic() < deadline, "the replica was not re-admitted"
            time.sleep(0.05)
    finally:
        stop.set()
        for thread in readers:
            thread.join()
    assert errors == []


def test_the_monitor_thread_measures_lag_and_stops_with_the_router(
    sync_cluster: PostgresCluster,
) -> None:
    router = SyncRouter.from_urls(
        sync_cluster.writer_url, sync_cluster.replica_urls, monitor_interval=0.1
    )
    with router:
        monitors = [t for t in threading.enumerate() if t.name == "routing_db monitor"]
        assert len(monitors) == 1 and monitors[0].daemon
        rows = router.status()
        assert [row["role"] for row in rows] == ["writer", "replica", "replica"]
        assert all(row["lag_bytes"] is not None for row in rows[1:])
    assert not monitors[0].is_alive()
    with pytest.raises(ConfigurationError, match="disposed"):
        routing_sync_sessionmaker(router)()


def test_async_urls_and_engines_are_refused_with_the_sync_driver_to_use(
    sync_cluster: PostgresCluster,
) -> None:
    asyncpg = sync_cluster.with_driver("asyncpg")
    with pytest.raises(ConfigurationError, match=r"postgresql\+psycopg://"):
        SyncRouter.from_urls(asyncpg.writer_url)
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(asyncpg.writer_url)
    with pytest.raises(ConfigurationError, match="SyncRouter takes Engine"):
        SyncRouter(writer=engine)  # type: ignore[arg-type]


def test_metrics_and_settings_of_the_sync_face(
    sync_cluster: PostgresCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ROUTING_DB_WRITER_URL", sync_cluster.writer_url)
    monkeypatch.setenv("ROUTING_DB_REPLICA_URLS", ",".join(sync_cluster.replica_urls))
    monkeypatch.setenv("ROUTING_DB_REPLICA_STATEMENT_TIMEOUT_MS", "1234")
    if sync_cluster.driver == "psycopg2":  # postgresql+psycopg is both
        with pytest.raises(ValidationError, match="needs an asyncio driver"):
            RoutingSettings()  # Router's settings
    registry = CollectorRegistry()
    with SyncRouter.from_settings() as router:
        register_metrics(router, registry)
        Sync = routing_sync_sessionmaker(router)
        for _ in range(4):
            with Sync() as session, read_only:
                assert where(session)[1] is True
                timeout = session.scalar(text("SHOW statement_timeout"))
                assert timeout == "1234ms"  # the replica's session setting
        routed = registry.get_sample_value(
            "routing_db_statements_total",
            {"engine": router.topology.name(router.replicas[0]), "role": "replica",
             "reason": "read_only"},
        )  # fmt: skip
    assert routed is not None and routed >= 2


def test_the_sync_example_script_runs_on_the_cluster(
    sync_cluster: PostgresCluster,
) -> None:
    script = Path(__file__).parent.parent / "examples" / "sync_script.py"
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROUTING_DB_")}
    env["ROUTING_DB_WRITER_URL"] = sync_cluster.writer_url
    env["ROUTING_DB_REPLICA_URLS"] = ",".join(sync_cluster.replica_urls)
    sync_cluster.sql(sync_cluster.primary, "DROP TABLE IF EXISTS sync_demo_jobs")
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, env=env,
        timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "write              -> writer" in done.stdout
    # Read-your-writes: whoever served it (a replica that replayed it, or
    # the writer), the job just written is there.
    same = next(line for line in done.stdout.splitlines() if "same" in line)
    assert "['nightly report']" in same
    assert "read_only          -> replica" in done.stdout
    assert "ReadOnlyViolation, nothing sent" in done.stdout


@pytest.mark.parametrize("end", ["rollback", "close", "begin() block raises"])
def test_ending_a_read_whose_replica_died_raises_nothing(
    faulty: PostgresCluster, router: SyncRouter, Sync: Maker, end: str
) -> None:
    session = Sync()

    def read_both_then_crash() -> None:
        with read_only:
            port, _ = where(session)
        where(session)  # the writer too, in the same transaction
        faulty.crash_replica([n.port for n in faulty.replicas].index(port))

    if end == "begin() block raises":
        with (
            pytest.raises(LookupError, match="the application's error"),
            session.begin(),
        ):
            read_both_then_crash()
            raise LookupError("the application's error")
    else:
        read_both_then_crash()
        if end == "rollback":
            session.rollback()
        else:
            session.close()
    # The session is still usable, on the writer.
    assert where(session) == (faulty.primary.port, False)
    session.close()


def test_a_sync_unit_of_work_reruns_after_its_connection_was_killed(
    sync_cluster: PostgresCluster, router: SyncRouter, Sync: Maker
) -> None:
    attempts: list[int] = []

    @unit_of_work(Sync)
    def add(session: Session, name: str) -> int:
        session.add(Item(name=name))
        session.flush()
        pid = session.scalar(text("SELECT pg_backend_pid()"))
        attempts.append(int(pid))
        if len(attempts) == 1:
            # The server ends this connection (and the call waits for it);
            # the next statement fails before COMMIT: transient, nothing was
            # committed, so the whole function runs again.
            ended = f"SELECT pg_terminate_backend({pid}, 10000)"
            sync_cluster.sql(sync_cluster.primary, ended)
            session.execute(text("SELECT 1"))
        return len(attempts)

    assert add("once") == 2
    assert attempts[0] != attempts[1]  # a new connection the second time
    assert (
        sync_cluster.sql(
            sync_cluster.primary, "SELECT string_agg(name, ',') FROM items"
        )
        == "once"
    )


@pytest.mark.parametrize("flag", ["read_only", "none"])
def test_a_writer_that_served_only_read_only_reads_dies_before_commit(
    faulty: PostgresCluster, make_router: RouterMaker, flag: str
) -> None:
    """The sync face's COMMIT under read_only, as the asyncio face's: the
    writer served the read and its connection was ended after it."""
    router = make_router.sync(faulty.writer_url)
    Sync = routing_sync_sessionmaker(router)

    def transaction() -> None:
        with Sync.begin() as session:
            assert where(session) == (faulty.primary.port, False)
            pid = session.scalar(text("SELECT pg_backend_pid()"))
            ended = f"SELECT pg_terminate_backend({int(pid)}, 10000)"
            assert faulty.sql(faulty.primary, ended) == "t"

    if flag == "read_only":
        with read_only:
            transaction()
    else:
        with pytest.raises(DBAPIError):
            transaction()
    assert router.writer.pool.checkedout() == 0  # type: ignore[attr-defined]


def test_a_replica_removed_under_threads_drains_and_cuts_what_is_left(
    sync_cluster: PostgresCluster, router: SyncRouter, Sync: Maker
) -> None:
    leaving = router.status()[1]["name"]
    port = sync_cluster.replicas[0].port
    errors: list[BaseException] = []
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            try:
                with Sync() as session, read_only:
                    where(session)
            except Exception as exc:  # counted: the test wants none
                errors.append(exc)

    # A transaction pinned to the leaving replica, idle in it past the drain.
    held = Sync()
    with read_only:
        while where(held)[0] != port:
            held.close()
    readers = [threading.Thread(target=read) for _ in range(8)]
    for thread in readers:
        thread.start()
    try:
        started = time.monotonic()
        router.remove_replica(leaving, drain_timeout=1.0)
        assert 1.0 <= time.monotonic() - started < 3  # waited for the held one
        # Cut: its next statement fails as a lost connection (transient).
        with pytest.raises(DBAPIError) as cut, read_only:
            where(held)
        assert is_connection_error(cut.value) and is_transient_error(cut.value)
        held.close()
        served = set()
        for _ in range(4):
            with Sync() as session, read_only:
                served.add(where(session)[0])
        assert served == {sync_cluster.replicas[1].port}
    finally:
        stop.set()
        for thread in readers:
            thread.join()
    assert [row["name"] for row in router.status()][1:] != [leaving]
    assert leaving not in [row["name"] for row in router.status()]
    assert errors == []  # reads moved to the other replica, none failed


def test_a_lagging_replica_is_skipped_until_it_catches_up(
    faulty: PostgresCluster,
) -> None:
    router = SyncRouter.from_urls(
        faulty.writer_url,
        faulty.replica_urls,
        monitor_interval=0.1,
        max_lag_bytes=256 * 1024,
    )
    Session = routing_sync_sessionmaker(router)
    lagging_port = faulty.replicas[0].port

    def state() -> dict[str, Any]:
        row: dict[str, Any] = router.status()[1]
        return row

    def served(reads: int) -> set[int]:
        ports = set()
        for _ in range(reads):
            with Session() as session, read_only:
                ports.add(where(session)[0])
        return ports

    with router:
        faulty.pause_replay(0)
        # Write until the paused replica is over the byte limit.
        while not state()["lagging"]:
            with Session.begin() as session:
                session.execute(
                    text(
                        "INSERT INTO items (name) SELECT repeat('x', 90) "
                        "FROM generate_series(1, 500)"
                    )
                )
            router.poll()
        assert state()["lag_bytes"] > 256 * 1024
        assert fresh(lambda: served(20)) == {faulty.replicas[1].port}
        faulty.resume_replay(0)
        deadline = time.monotonic() + 5
        while state()["lagging"]:  # the monitor thread sees it catch up
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert lagging_port in fresh(lambda: served(10))
