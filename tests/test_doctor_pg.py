"""``routing-db check`` on the real cluster: the good case and every failure."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from routing_db._cli.main import main
from routing_db.testing import Balancer, PostgresCluster

SECRET = "wrong-pw-s3cret"


def check(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["check", *args])
    out, err = capsys.readouterr()
    return code, out, err


def urls(cluster: PostgresCluster, *replicas: str) -> list[str]:
    args = ["--writer-url", cluster.writer_url]
    for url in replicas or cluster.replica_urls:
        args += ["--replica-url", url]
    return args


def test_a_sound_setup(
    cluster: PostgresCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    cluster.wait_replicated()
    code, out, err = check(capsys, *urls(cluster))
    assert code == 0, err
    assert "all good" in err
    lines = out.strip().splitlines()
    assert len(lines) == 4  # header, writer, two replicas
    assert all(" ok " in line for line in lines[1:])

    code, out, _ = check(capsys, *urls(cluster), "--json")
    reports = json.loads(out)
    assert [r["role"] for r in reports] == ["writer", "replica", "replica"]
    assert reports[0]["in_recovery"] is False
    assert all(r["in_recovery"] for r in reports[1:])
    assert len({r["system_identifier"] for r in reports}) == 1
    assert all(r["lag_bytes"] is not None for r in reports[1:])


def test_a_replica_url_that_reaches_several_servers(
    cluster: PostgresCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    with Balancer([node.port for node in cluster.replicas]) as balancer:
        endpoint = balancer.url(cluster.replica_urls[0])
        code, out, err = check(capsys, *urls(cluster, endpoint), "--json")
    assert code == 0, err
    reports = json.loads(out)
    assert reports[1]["servers"] == 2
    assert "reached 2 servers" in err and "supported" in err
    # The control: one URL per server reaches one server each.
    code, out, err = check(capsys, *urls(cluster), "--json")
    assert [r["servers"] for r in json.loads(out)[1:]] == [1, 1]
    assert "reached" not in err


def test_a_replica_that_is_a_primary(
    cluster: PostgresCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = check(capsys, *urls(cluster, cluster.writer_url))
    assert code == 1
    assert "is a primary" in err


def test_a_writer_that_is_a_standby(
    cluster: PostgresCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = check(
        capsys, "--writer-url", cluster.replica_urls[0], "--replica-url",
        cluster.replica_urls[1],
    )  # fmt: skip
    assert code == 1
    assert "does not take writes (a standby)" in err


def test_an_unreachable_host(
    cluster: PostgresCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    dead = f"postgresql+asyncpg://postgres:{SECRET}@127.0.0.1:1/postgres"
    code, out, err = check(capsys, *urls(cluster, dead))
    assert code == 1
    assert "unreachable" in err
    assert SECRET not in out + err


def test_a_pool_budget_over_the_limit(
    cluster: PostgresCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    # 300 max_connections on the test servers, minus 3 reserved: 297.
    code, _, err = check(capsys, *urls(cluster), "--processes", "20")
    assert code == 1
    assert "pool budget 300 connections is over the server's limit of 297" in err
    code, _, _ = check(capsys, *urls(cluster), "--processes", "19")
    assert code == 0


@pytest.fixture
def password_user(cluster: PostgresCluster) -> Iterator[str]:
    """A role that must log in with a password (scram) on the primary."""
    cluster.sql(cluster.primary, "CREATE ROLE pwuser LOGIN PASSWORD 'right-pw'")
    hba = Path(cluster.sql(cluster.primary, "SHOW hba_file"))
    original = hba.read_text()
    hba.write_text("host all pwuser 127.0.0.1/32 scram-sha-256\n" + original)
    cluster.sql(cluster.primary, "SELECT pg_reload_conf()")
    try:
        yield "pwuser"
    finally:
        hba.write_text(original)
        cluster.sql(cluster.primary, "SELECT pg_reload_conf()")
        cluster.sql(cluster.primary, "DROP ROLE pwuser")


def test_a_wrong_password(
    cluster: PostgresCluster,
    password_user: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    host = f"127.0.0.1:{cluster.primary.port}/postgres"
    right = f"postgresql+asyncpg://{password_user}:right-pw@{host}"
    code, _, err = check(capsys, "--writer-url", right)
    assert code == 0, err  # the control: the password is really checked

    wrong = f"postgresql+asyncpg://{password_user}:{SECRET}@{host}"
    code, out, err = check(capsys, "--writer-url", wrong)
    assert code == 1
    assert "authentication failed" in err
    assert SECRET not in out + err


def test_a_standby_of_another_primary(
    cluster: PostgresCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    other = PostgresCluster.start(replicas=1)
    try:
        code, _, err = check(capsys, *urls(cluster, other.replica_urls[0]))
    finally:
        other.stop()
    assert code == 1
    assert "replicates a different primary" in err


def test_bad_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = check(capsys, "--writer-url", "mysql://u@h/db")
    assert code == 2 and "aiomysql" in err
    code, _, err = check(
        capsys, "--writer-url", "postgresql+asyncpg://u@h/db", "--processes", "0"
    )
    assert code == 2 and "--processes" in err


def test_the_command_is_installed(cluster: PostgresCluster) -> None:
    import shutil
    import subprocess
    import sys

    script = Path(sys.executable).parent / "routing-db"
    command = [str(script)] if script.exists() else [shutil.which("routing-db") or ""]
    assert command[0], "the routing-db console script is not installed"
    for argv in (command, [sys.executable, "-m", "routing_db"]):
        done = subprocess.run(
            [*argv, "check", "--writer-url", cluster.writer_url],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        assert "all good" in done.stderr


def test_a_missing_driver_is_a_clean_configuration_error(
    asyncpg_cluster: PostgresCluster,
) -> None:
    import subprocess
    import sys

    # psycopg made unimportable in a fresh interpreter, as on a machine
    # without it; the replicas are reachable over asyncpg meanwhile.
    writer = asyncpg_cluster.with_driver("psycopg").writer_url
    argv = ["check", "--writer-url", writer]
    for url in asyncpg_cluster.replica_urls:
        argv += ["--replica-url", url]
    program = (
        "import sys; sys.modules['psycopg'] = None; "
        "from routing_db._cli.main import main; sys.exit(main(sys.argv[1:]))"
    )
    done = subprocess.run(
        [sys.executable, "-c", program, *argv],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("routing-db: writer_url needs the driver 'psycopg'")
    assert "pip install psycopg[binary]" in lines[0]


def test_a_mistyped_database_name_is_reported_with_the_driver_s_cause(
    cluster: PostgresCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    mistyped = make_url(cluster.replica_urls[0]).set(database="postgress")
    url = mistyped.render_as_string(hide_password=False)
    code, _, err = check(capsys, *urls(cluster, url))
    assert code == 1
    assert 'database "postgress" does not exist' in err
    # psycopg's own message starts "connection failed:": said once.
    assert "connection failed: connection failed" not in err
