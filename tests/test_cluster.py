"""The test cluster itself: it streams, and it leaves nothing behind."""

from __future__ import annotations

import os
import socket
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from routing_db.testing import ClusterError, PostgresCluster, _servers, find_pg_bindir

from .waiting import until_sync


def accepts(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def server_processes(basedir: Path) -> list[str]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if str(basedir).encode() in cmdline:
            found.append(pid)
    return found


@pytest.mark.servers  # starts its own
def test_start_streams_and_stop_leaves_nothing_behind() -> None:
    cluster = PostgresCluster.start(replicas=1)
    basedir = cluster._basedir
    assert basedir is not None
    try:
        assert cluster.sql(cluster.primary, "SELECT pg_is_in_recovery()") == "f"
        assert cluster.sql(cluster.replicas[0], "SELECT pg_is_in_recovery()") == "t"
        assert (
            cluster.sql(
                cluster.primary,
                "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'",
            )
            == "1"
        )
        assert server_processes(basedir)
    finally:
        cluster.stop()
    ports = [cluster.primary.port, cluster.replicas[0].port]
    assert not any(accepts(port) for port in ports)
    assert not basedir.exists()
    assert server_processes(basedir) == []
    cluster.stop()  # idempotent


def test_missing_server_binaries_say_how_to_install(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("ROUTING_DB_PG_BINDIR", str(tmp_path / "nothing-here"))
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(_servers, "_SEARCH_GLOBS", ())
    with pytest.raises(ClusterError, match="apt-get install postgresql"):
        find_pg_bindir()


def test_process_controls_refuse_servers_we_did_not_start(
    cluster: PostgresCluster,
) -> None:
    external = PostgresCluster.external(cluster.writer_url, cluster.replica_urls)
    assert not external.owned
    assert external.sql(external.replicas[0], "SELECT pg_is_in_recovery()") == "t"
    with pytest.raises(ClusterError, match=r"not started by routing_db\.testing"):
        external.stop_replica(0)
    external.stop()  # a no-op: it never stops servers it did not start
    assert cluster.is_running(cluster.primary)


def test_external_cluster_from_the_environment(
    cluster: PostgresCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ROUTING_DB_TEST_WRITER_URL", raising=False)
    assert PostgresCluster.from_env() is None
    monkeypatch.setenv("ROUTING_DB_TEST_WRITER_URL", cluster.writer_url)
    monkeypatch.setenv("ROUTING_DB_TEST_REPLICA_URLS", ",".join(cluster.replica_urls))
    external = PostgresCluster.from_env()
    assert external is not None and not external.owned
    assert external.writer_url == cluster.writer_url
    assert external.replica_urls == cluster.replica_urls
    assert [
        external.sql(n, "SELECT pg_is_in_recovery()") for n in external.replicas
    ] == [
        "t",
        "t",
    ]


@pytest.mark.servers  # starts its own
def test_clusters_of_killed_processes_are_reaped() -> None:
    import signal
    import subprocess
    import sys

    from routing_db.testing._servers import reap_orphans

    # A process that starts a cluster and is then killed without cleanup.
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\n"
            "from routing_db.testing import PostgresCluster\n"
            "c = PostgresCluster.start(replicas=1)\n"
            "print(c.primary.port, c.replicas[0].port, c._basedir, flush=True)\n"
            "time.sleep(600)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    primary, replica, basedir = child.stdout.readline().split()
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=30)
    ports = (int(primary), int(replica))
    assert all(accepts(port) for port in ports)  # left running: orphans

    reaped = reap_orphans(find_pg_bindir())
    assert Path(basedir) in reaped
    assert not Path(basedir).exists()
    assert not any(accepts(port) for port in ports)
    # pg_ctl returns once the postmaster has removed its pid file; its
    # processes end a moment later (seen under load).
    until_sync(lambda: server_processes(Path(basedir)) == [], 10)


@pytest.mark.servers  # starts its own
def test_a_cluster_started_outside_pytest_stops_with_its_block() -> None:
    with PostgresCluster.start(replicas=1) as cluster:
        assert cluster.sql(cluster.replicas[0], "SELECT pg_is_in_recovery()") == "t"
        assert cluster.writer_url.startswith("postgresql+asyncpg://postgres@127.0.0.1:")
    assert not cluster.is_running(cluster.primary)
    assert cluster._basedir is not None and not cluster._basedir.exists()


def test_a_query_the_standby_cancels_for_a_conflict_with_replay_runs_again(
    asyncpg_faults: PostgresCluster,
) -> None:
    cluster = asyncpg_faults
    primary, standby = cluster.primary, cluster.replicas[0]
    cluster.sql(
        primary,
        "DROP TABLE IF EXISTS conflicted; CREATE TABLE conflicted (n int); "
        "INSERT INTO conflicted VALUES (1)",
    )
    cluster.wait_replicated()
    cluster.sql(standby, "ALTER SYSTEM SET max_standby_streaming_delay = 0")
    cluster.sql(standby, "SELECT pg_reload_conf()")
    try:
        cluster.pause_replay(0)
        cluster.sql(primary, "UPDATE conflicted SET n = 2")
        cluster.sql(primary, "VACUUM conflicted")  # removes the row's n = 1 version
        read = "SELECT n FROM conflicted, pg_sleep(2)"
        running = (
            "SELECT count(*) FROM pg_stat_activity "
            f"WHERE query = '{read}' AND pid <> pg_backend_pid()"
        )
        with ThreadPoolExecutor(1) as pool:
            reading = pool.submit(cluster.sql, standby, read)
            until_sync(lambda: cluster.sql(standby, running) == "1")
            # Its snapshot needs the version the vacuum removed: replaying
            # that cancels it at once. Had it not been cancelled, it would
            # say 1; run again after the replay, it says 2.
            cluster.resume_replay(0)
            assert reading.result() == "2"
    finally:
        cluster.resume_replay(0)
        cluster.sql(standby, "ALTER SYSTEM RESET max_standby_streaming_delay")
        cluster.sql(standby, "SELECT pg_reload_conf()")
        cluster.sql(primary, "DROP TABLE conflicted")
