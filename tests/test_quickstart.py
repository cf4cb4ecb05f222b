"""The quickstart runs with no server, and against real servers from the env."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from routing_db.testing import PostgresCluster

QUICKSTART = Path(__file__).parent.parent / "examples" / "quickstart.py"


def run(env: dict[str, str]) -> str:
    done = subprocess.run(
        [sys.executable, str(QUICKSTART)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("ROUTING_DB_")}


def test_quickstart_on_sqlite() -> None:
    out = run(clean_env())
    assert "no flag            -> writer" in out
    # No WAL positions on SQLite: the time window keeps this context's reads
    # on the writer right after its write.
    assert "read_only, same    -> writer: ['hello" in out
    assert "read_only          -> replica (read-only connection): ['hello" in out
    assert "use_writer inside  -> writer" in out
    assert "write in read_only -> ReadOnlyViolation" in out


def test_quickstart_on_the_cluster(cluster: PostgresCluster) -> None:
    env = clean_env()
    env["ROUTING_DB_WRITER_URL"] = cluster.writer_url
    env["ROUTING_DB_REPLICA_URLS"] = ",".join(cluster.replica_urls)
    # The table must exist on the replicas before the quickstart reads there.
    cluster.sql(
        cluster.primary,
        "CREATE TABLE IF NOT EXISTS quickstart_notes "
        "(id SERIAL PRIMARY KEY, body VARCHAR(200) NOT NULL)",
    )
    cluster.wait_replicated()
    out = run(env)
    assert f"no flag            -> writer (server port {cluster.primary.port})" in out
    assert "use_writer inside  -> writer" in out
    assert "write in read_only -> ReadOnlyViolation" in out
    assert "read_only          -> replica (server port" in out
    # Read-your-writes: whoever served it, the row just written is there.
    assert "read_only, same    -> " in out
    same = next(line for line in out.splitlines() if "read_only, same" in line)
    assert "'hello from the writer'" in same


def test_tracing_example_puts_decisions_on_the_span() -> None:
    tracing = QUICKSTART.with_name("tracing.py")
    done = subprocess.run(
        [sys.executable, str(tracing)],
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_env(),
    )
    assert done.returncode == 0, done.stderr
    span, _ = json.JSONDecoder().raw_decode(done.stdout.strip())
    routed = [
        e["attributes"] for e in span["events"] if e["name"] == "routing_db.routed"
    ]
    assert [(a["routing_db.role"], a["routing_db.reason"]) for a in routed] == [
        ("replica", "read_only"),
        ("writer", "default"),
    ]
    assert "routing_db.fallback" not in span["attributes"]
