"""Run SQLAlchemy's ``test/ext/asyncio`` twice, plain and with ``RoutingSession``.

``python -m tests.sqlalchemy_suite`` (``make test-sqlalchemy-suite``): takes the
sdist of the installed SQLAlchemy from PyPI, starts a throwaway PostgreSQL,
runs the suite once as it is and once with ``AsyncSession`` swapped for
``RoutingSession`` (``swap.py``), and compares the outcome of every test.
Only the tests listed in ``EXPECTED`` may differ, each for the reason given;
any other difference, or an expected one that no longer differs, fails.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tarfile
import xml.etree.ElementTree as ET
from pathlib import Path

import sqlalchemy

from routing_db.testing import PgNode, PostgresCluster

__all__ = ["EXPECTED", "main"]

ROOT = Path(__file__).resolve().parents[2]
_BACKEND_SUFFIX = re.compile(r"_postgresql\+\w+_\d+_\d+$")
CACHE = ROOT / ".sqlalchemy-suite"

# Tests that assert the exact class, or the names a class has: a subclass
# cannot pass them, whatever it does.
EXPECTED = {
    "test.ext.asyncio.test_session.OverrideSyncSession::test_default": (
        "asserts that sync_session is exactly Session; RoutingSession's is "
        "RoutingSyncSession"
    ),
    "test.ext.asyncio.test_session.AsyncSessionQueryTest::"
    "test_no_ss_cursor_w_execute[execute]": (
        "the error message names the class (RoutingSession.execute())"
    ),
    "test.ext.asyncio.test_session.AsyncSessionQueryTest::"
    "test_no_ss_cursor_w_execute[statement]": (
        "the error message names the class (RoutingSession.execute())"
    ),
    "test.ext.asyncio.test_scoping.AsyncScopedSessionTest::test_attributes": (
        "compares AsyncSession's public names with what async_scoped_session "
        "proxies; RoutingSession adds one (router)"
    ),
}


SWAP = "tests.sqlalchemy_suite.swap"


def _sdist() -> Path:
    """The unpacked sdist of the installed SQLAlchemy (downloaded once)."""
    version = sqlalchemy.__version__
    unpacked = CACHE / f"sqlalchemy-{version}"
    if (unpacked / "test" / "ext" / "asyncio").is_dir():
        return unpacked
    CACHE.mkdir(exist_ok=True)
    pip = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps"]
    wanted = ["--no-binary", ":all:", f"sqlalchemy=={version}", "-d", str(CACHE)]
    subprocess.run([*pip, *wanted], check=True)
    archive = CACHE / f"sqlalchemy-{version}.tar.gz"
    with tarfile.open(archive) as tar:
        tar.extractall(CACHE, filter="data")
    return unpacked


def _outcomes(junit: Path) -> dict[str, str]:
    outcomes = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        # SQLAlchemy's class names carry the database and its version.
        classname = _BACKEND_SUFFIX.sub("", case.get("classname") or "")
        name = f"{classname}::{case.get('name')}"
        kinds = {child.tag for child in case}
        outcomes[name] = next(
            (k for k in ("failure", "error", "skipped") if k in kinds), "passed"
        )
    return outcomes


def _run(sdist: Path, url: str, junit: Path, *plugins: str) -> dict[str, str]:
    """Run the suite; its own report goes to ``junit``'s folder, not stdout."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    # -s: SQLAlchemy's conftest then tests the installed package, not lib/.
    command = [sys.executable, "-s", "-m", "pytest", "test/ext/asyncio"]
    command += ["--dburi", url, "-p", "no:cacheprovider", "-q", "--tb=line"]
    command += [f"--junitxml={junit}"]
    for plugin in plugins:
        command += ["-p", plugin]
    with junit.with_suffix(".log").open("w") as log:
        subprocess.run(command, cwd=sdist, env=env, stdout=log, stderr=log)
    return _outcomes(junit)


def main() -> int:
    """Run both, print the differences, and say whether they are the expected."""
    sdist = _sdist()
    cluster = PostgresCluster.start(replicas=0)
    try:
        cluster.sql(cluster.primary, "CREATE DATABASE test")
        primary = cluster.primary
        test_db = PgNode("test", primary.host, primary.port, dbname="test")
        cluster.sql(test_db, "CREATE SCHEMA test_schema; CREATE SCHEMA test_schema_2")
        plain = _run(sdist, test_db.url, CACHE / "plain.xml")
        routed = _run(sdist, test_db.url, CACHE / "routed.xml", SWAP)
    finally:
        cluster.stop()
    differ = {
        name: (plain.get(name), routed.get(name))
        for name in plain.keys() | routed.keys()
        if plain.get(name) != routed.get(name)
    }
    unexpected = sorted(set(differ) - set(EXPECTED))
    gone = sorted(set(EXPECTED) - set(differ))
    print(f"\nSQLAlchemy {sqlalchemy.__version__} test/ext/asyncio: {len(plain)} tests")
    for name, (was, now) in sorted(differ.items()):
        why = EXPECTED.get(name, "UNEXPECTED")
        print(f"  {name}: {was} -> {now} ({why})")
    for name in gone:
        print(f"  {name}: expected to differ, but does not (update EXPECTED)")
    ok = not unexpected and not gone and len(plain) > 300
    print(
        f"{len(plain) - len(differ)} tests agree, {len(differ) - len(unexpected)} "
        f"differ as expected, {len(unexpected) + len(gone)} otherwise "
        f"(logs: {CACHE}/plain.log, routed.log)"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
