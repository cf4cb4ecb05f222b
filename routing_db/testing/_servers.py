"""Local PostgreSQL servers for tests: finding the binaries, free ports,
nodes, and cleaning up after processes that died without stopping theirs."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "INSTALL_HINT",
    "OWNER",
    "PREFIX",
    "SERVER_USER",
    "ClusterError",
    "PgNode",
    "find_binary",
    "find_pg_bindir",
    "free_ports",
    "owner_alive",
    "poll",
    "reap_orphans",
]

INSTALL_HINT = (
    "PostgreSQL server binaries (initdb, pg_ctl, pg_basebackup) were not found. "
    "Install them (Debian/Ubuntu: apt-get install postgresql; Fedora: dnf install "
    "postgresql-server; macOS: brew install postgresql) or set ROUTING_DB_PG_BINDIR."
)
SERVER_USER = "postgres"
_SEARCH_GLOBS = ("/usr/lib/postgresql/*/bin", "/usr/pgsql-*/bin")


class ClusterError(RuntimeError):
    """The test cluster could not be started, controlled or queried."""


def find_binary(command: str, *, env: str, default: str) -> Path | None:
    """A server binary: ``$env``, else ``command`` on the PATH, else ``default``."""
    for candidate in (os.environ.get(env, ""), shutil.which(command) or "", default):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None


def find_pg_bindir() -> Path:
    """Locate the PostgreSQL server binaries, newest version first."""
    candidates: list[str] = []
    if env := os.environ.get("ROUTING_DB_PG_BINDIR"):
        candidates.append(env)
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(
            ["pg_config", "--bindir"], capture_output=True, text=True, timeout=10
        )
        candidates.append(out.stdout.strip())
    versioned = [path for pattern in _SEARCH_GLOBS for path in glob.glob(pattern)]
    candidates += sorted(versioned, key=_version_key, reverse=True)
    if initdb := shutil.which("initdb"):
        candidates.append(str(Path(initdb).parent))
    for candidate in candidates:
        if candidate and (Path(candidate) / "initdb").is_file():
            return Path(candidate)
    raise ClusterError(INSTALL_HINT)


PREFIX = "routing_db_pg_"
OWNER = "owner.pid"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, under another user
    return True


def owner_alive(basedir: Path) -> bool:
    """Is the process that created this test server directory still running?"""
    try:
        owner = int((basedir / OWNER).read_text())
    except (OSError, ValueError):
        return True  # not ours to judge (or still being created)
    return _alive(owner)


def reap_orphans(bindir: Path) -> list[Path]:
    """Stop and delete test clusters whose owning process is gone."""
    reaped = []
    for basedir in Path(tempfile.gettempdir()).glob(f"{PREFIX}*"):
        if owner_alive(basedir):
            continue
        for pidfile in basedir.glob("*/postmaster.pid"):
            cmd = [str(bindir / "pg_ctl"), "stop", "-D", str(pidfile.parent)]
            cmd += ["-m", "immediate", "-w", "-t", "30"]
            if os.geteuid() == 0:
                cmd = ["runuser", "-u", SERVER_USER, "--", *cmd]
            subprocess.run(cmd, capture_output=True, timeout=60, cwd="/")
        shutil.rmtree(basedir, ignore_errors=True)
        reaped.append(basedir)
    return reaped


def _version_key(path: str) -> tuple[int, ...]:
    digits = "".join(c if c.isdigit() else " " for c in path).split()
    return tuple(int(d) for d in digits)


def poll(
    what: str, check: Callable[[], bool], timeout: float, interval: float = 0.05
) -> None:
    """Call ``check`` until it is true (``ClusterError``: not yet) or time is up."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(ClusterError):
            if check():
                return
        if time.monotonic() > deadline:
            raise ClusterError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def free_ports(count: int) -> list[int]:
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


@dataclass
class PgNode:
    """One server of the cluster: where it listens and, if ours, where it lives."""

    name: str
    host: str
    port: int
    user: str = "postgres"
    dbname: str = "postgres"
    password: str | None = field(default=None, repr=False)
    datadir: Path | None = None

    @property
    def url(self) -> str:
        """SQLAlchemy asyncpg URL of this server (with its password, if any)."""
        return self.url_for("asyncpg")

    def url_for(self, driver: str) -> str:
        """SQLAlchemy URL of this server for ``driver`` (``asyncpg``, ``psycopg``)."""
        auth = self.user if self.password is None else f"{self.user}:{self.password}"
        return f"postgresql+{driver}://{auth}@{self.host}:{self.port}/{self.dbname}"

    @property
    def dsn(self) -> str:
        """libpq URI of this server without the password (psql gets PGPASSWORD)."""
        return f"postgresql://{self.user}@{self.host}:{self.port}/{self.dbname}"

    @property
    def logfile(self) -> Path | None:
        """Server log of a node this process started."""
        return None if self.datadir is None else self.datadir.with_suffix(".log")
