"""A throwaway PgBouncer in front of test PostgreSQL servers."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

from ._servers import SERVER_USER, ClusterError, PgNode, find_binary, free_ports

__all__ = ["PgBouncer", "find_pgbouncer"]

INSTALL_HINT = (
    "pgbouncer was not found. Install it (Debian/Ubuntu: apt-get install "
    "pgbouncer; Fedora: dnf install pgbouncer; macOS: brew install pgbouncer) "
    "or set ROUTING_DB_PGBOUNCER_BIN."
)


def find_pgbouncer() -> Path:
    """Locate the pgbouncer binary."""
    found = find_binary(
        "pgbouncer", env="ROUTING_DB_PGBOUNCER_BIN", default="/usr/sbin/pgbouncer"
    )
    if found is None:
        raise ClusterError(INSTALL_HINT)
    return found


class PgBouncer:
    """One pgbouncer process; each target server is one of its databases."""

    def __init__(
        self,
        *,
        port: int,
        basedir: Path,
        process: subprocess.Popen[bytes],
        targets: Mapping[str, PgNode],
    ) -> None:
        self.port = port
        self._basedir = basedir
        self._process = process
        self._targets = dict(targets)

    @classmethod
    def start(
        cls,
        targets: Mapping[str, PgNode],
        *,
        pool_mode: str = "transaction",
        pool_size: int = 2,
    ) -> PgBouncer:
        """Start pgbouncer with one database per target (named by its key)."""
        binary = find_pgbouncer()
        basedir = Path(tempfile.mkdtemp(prefix="routing_db_pgbouncer_"))
        (port,) = free_ports(1)
        (basedir / "databases.ini").write_text(_databases(targets))
        (basedir / "pgbouncer.ini").write_text(
            "[databases]\n"
            f"%include {basedir / 'databases.ini'}\n"
            "[pgbouncer]\n"
            f"listen_addr = 127.0.0.1\nlisten_port = {port}\n"
            f"unix_socket_dir = {basedir}\n"
            "auth_type = trust\n"
            f"auth_file = {basedir / 'userlist.txt'}\n"
            f"pool_mode = {pool_mode}\n"
            f"default_pool_size = {pool_size}\n"
            "max_client_conn = 500\n"
            "ignore_startup_parameters = extra_float_digits\n"
            f"logfile = {basedir / 'pgbouncer.log'}\n"
            f"pidfile = {basedir / 'pgbouncer.pid'}\n"
        )
        users = {node.user for node in targets.values()}
        (basedir / "userlist.txt").write_text(
            "".join(f'"{user}" ""\n' for user in sorted(users))
        )
        cmd = [str(binary), str(basedir / "pgbouncer.ini")]
        if os.geteuid() == 0:
            # pgbouncer refuses to run as root, like PostgreSQL.
            shutil.chown(basedir, SERVER_USER, None)
            for path in basedir.iterdir():
                shutil.chown(path, SERVER_USER, None)
            cmd = ["runuser", "-u", SERVER_USER, "--", *cmd]
        process = subprocess.Popen(
            cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd="/"
        )
        bouncer = cls(port=port, basedir=basedir, process=process, targets=targets)
        try:
            bouncer._wait_listening()
        except BaseException:
            bouncer.stop()
            raise
        return bouncer

    def _wait_listening(self, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self._process.poll() is not None:
                raise ClusterError(f"pgbouncer exited:\n{self.log()}")
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=1),
            ):
                return
            if time.monotonic() > deadline:
                raise ClusterError(f"pgbouncer did not listen:\n{self.log()}")
            time.sleep(0.05)

    def retarget(self, database: str, node: PgNode) -> None:
        """Point ``database`` at ``node`` and reload, as a failover tool does.

        Clients stay connected; their next transactions go to ``node``, and
        server connections to the old target close once released.
        """
        self._targets[database] = node
        (self._basedir / "databases.ini").write_text(_databases(self._targets))
        pid = int((self._basedir / "pgbouncer.pid").read_text().strip())
        os.kill(pid, signal.SIGHUP)  # RELOAD

    def url(self, database: str, driver: str = "asyncpg") -> str:
        """SQLAlchemy URL of one of its databases (user ``postgres``)."""
        return f"postgresql+{driver}://postgres@127.0.0.1:{self.port}/{database}"

    def log(self, lines: int = 30) -> str:
        """The last lines of pgbouncer's log."""
        path = self._basedir / "pgbouncer.log"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        """Stop pgbouncer and delete its files."""
        if self._process.poll() is None:
            # To pgbouncer itself (a runuser in between may not pass it on).
            # SIGTERM closes client connections at once; SIGINT would wait.
            with contextlib.suppress(OSError, ValueError):
                pid = int((self._basedir / "pgbouncer.pid").read_text().strip())
                os.kill(pid, signal.SIGTERM)
            try:
                self._process.wait(10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(10)
        shutil.rmtree(self._basedir, ignore_errors=True)


def _databases(targets: Mapping[str, PgNode]) -> str:
    return "".join(
        f"{name} = host={node.host} port={node.port} dbname={node.dbname}"
        f" user={node.user}\n"
        for name, node in targets.items()
    )
