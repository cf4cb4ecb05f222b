"""A throwaway MariaDB primary with GTID replicas, and fault controls."""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ._faults import ReplicatedCluster
from ._servers import OWNER, ClusterError, free_ports, owner_alive, poll

__all__ = ["MariaDBCluster", "MariaDBNode", "find_mariadbd"]

INSTALL_HINT = (
    "MariaDB server binaries (mariadbd, mariadb-install-db, mariadb) were not "
    "found. Install them (Debian/Ubuntu: apt-get install mariadb-server; "
    "Fedora: dnf install mariadb-server; macOS: brew install mariadb) or set "
    "ROUTING_DB_MARIADBD to the server binary."
)
PREFIX = "routing_db_mariadb_"
SERVER_USER = "mysql"
# The application's account: no SUPER or READ ONLY ADMIN, so a replica's
# read_only=1 applies to it as it would in production.
APP_USER, APP_PASSWORD, APP_DB = "app", "app-secret", "app"
_REPL_USER, _REPL_PASSWORD = "repl", "repl-secret"


def find_mariadbd() -> Path:
    """Locate the MariaDB server binary."""
    candidates = [os.environ.get("ROUTING_DB_MARIADBD", "")]
    candidates += [shutil.which(name) or "" for name in ("mariadbd", "mysqld")]
    candidates += ["/usr/sbin/mariadbd", "/usr/libexec/mariadbd"]
    tools = shutil.which("mariadb-install-db") and shutil.which("mariadb")
    for candidate in candidates:
        if tools and candidate and Path(candidate).is_file():
            return Path(candidate)
    raise ClusterError(INSTALL_HINT)


def _as_server_user(cmd: list[str]) -> list[str]:
    # mariadbd refuses to run as root unless told to; run it as mysql instead.
    return ["runuser", "-u", SERVER_USER, "--", *cmd] if os.geteuid() == 0 else cmd


def reap_orphans() -> list[Path]:
    """Kill and delete MariaDB test servers whose owning process is gone."""
    reaped = []
    for basedir in Path(tempfile.gettempdir()).glob(f"{PREFIX}*"):
        if owner_alive(basedir):
            continue
        for pidfile in basedir.glob("*.pid"):
            with contextlib.suppress(OSError, ValueError):
                os.kill(int(pidfile.read_text().strip()), signal.SIGKILL)
        shutil.rmtree(basedir, ignore_errors=True)
        reaped.append(basedir)
    return reaped


@dataclass
class MariaDBNode:
    """One MariaDB server of the cluster."""

    name: str
    port: int
    server_id: int
    basedir: Path

    @property
    def datadir(self) -> Path:
        return self.basedir / self.name

    @property
    def socket(self) -> Path:
        return self.basedir / f"{self.name}.sock"

    @property
    def pidfile(self) -> Path:
        return self.basedir / f"{self.name}.pid"

    @property
    def logfile(self) -> Path:
        return self.basedir / f"{self.name}.err"

    def url_for(self, driver: str = "aiomysql") -> str:
        """SQLAlchemy URL (MariaDB dialect) for the application's account."""
        return (
            f"mariadb+{driver}://{APP_USER}:{APP_PASSWORD}@127.0.0.1:{self.port}"
            f"/{APP_DB}"
        )


class MariaDBCluster(ReplicatedCluster[MariaDBNode]):
    """A MariaDB primary and its GTID replicas, with controls to inject faults."""

    def __init__(
        self,
        primary: MariaDBNode,
        replicas: Sequence[MariaDBNode],
        *,
        mariadbd: Path,
        basedir: Path,
    ) -> None:
        self.primary = primary
        self.replicas = list(replicas)
        self._mariadbd = mariadbd
        self._basedir = basedir
        self._processes: dict[str, subprocess.Popen[bytes]] = {}
        self._stopped = False

    @classmethod
    def start(cls, replicas: int = 2) -> MariaDBCluster:
        """Install, start and connect a primary and ``replicas`` GTID replicas."""
        mariadbd = find_mariadbd()
        reap_orphans()
        basedir = Path(tempfile.mkdtemp(prefix=PREFIX))
        (basedir / OWNER).write_text(str(os.getpid()))
        if os.geteuid() == 0:
            shutil.chown(basedir, SERVER_USER, None)
        ports = free_ports(1 + replicas)
        nodes = [
            MariaDBNode(
                "primary" if i == 0 else f"replica{i - 1}", port, i + 1, basedir
            )
            for i, port in enumerate(ports)
        ]
        cluster = cls(nodes[0], nodes[1:], mariadbd=mariadbd, basedir=basedir)
        atexit.register(cluster.stop)
        try:
            for node in nodes:
                cluster._install(node)
                cluster._start_node(node)
            cluster._init_primary()
            for index in range(replicas):
                cluster._init_replica(index)
            cluster.wait_replicated()
        except BaseException:
            cluster.stop()
            raise
        return cluster

    @property
    def writer_url(self) -> str:
        """SQLAlchemy URL of the primary."""
        return self.primary.url_for()

    @property
    def replica_urls(self) -> list[str]:
        """SQLAlchemy URLs of the replicas."""
        return [node.url_for() for node in self.replicas]

    # -- processes ------------------------------------------------------------

    def _install(self, node: MariaDBNode) -> None:
        cmd = _as_server_user(
            [
                "mariadb-install-db", "--no-defaults", f"--datadir={node.datadir}",
                "--auth-root-authentication-method=normal", "--skip-test-db",
            ]
        )  # fmt: skip
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise ClusterError(f"mariadb-install-db failed: {done.stderr.strip()}")

    def _start_node(self, node: MariaDBNode) -> None:
        replica = node is not self.primary
        cmd = _as_server_user(
            [
                str(self._mariadbd), "--no-defaults", f"--datadir={node.datadir}",
                f"--port={node.port}", "--bind-address=127.0.0.1",
                f"--socket={node.socket}", f"--pid-file={node.pidfile}",
                f"--log-error={node.logfile}", f"--server-id={node.server_id}",
                "--log-bin=binlog", "--binlog-format=ROW", "--skip-name-resolve",
                "--innodb-buffer-pool-size=16M", "--innodb-log-file-size=8M",
                "--performance-schema=OFF", "--max-connections=300",
                "--innodb-flush-log-at-trx-commit=0", "--sync-binlog=0",
                # log-slave-updates: a promoted replica's binlog holds what it
                # applied, so the others can follow it by GTID.
                *(
                    ["--read-only=1", "--relay-log=relay", "--log-slave-updates"]
                    if replica
                    else []
                ),
            ]
        )  # fmt: skip
        self._processes[node.name] = subprocess.Popen(
            cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd="/"
        )
        poll(f"{node.name} to accept connections", lambda: self._ping(node), 60)

    def _ping(self, node: MariaDBNode) -> bool:
        process = self._processes.get(node.name)
        if process is not None and process.poll() is not None:
            raise ClusterError(f"{node.name} exited:\n{self.log(node)}")
        self.sql(node, "SELECT 1", timeout=5)
        return True

    def log(self, node: MariaDBNode, lines: int = 30) -> str:
        """The last lines of a node's error log."""
        if not node.logfile.exists():
            return ""
        return "\n".join(node.logfile.read_text(errors="replace").splitlines()[-lines:])

    def _init_primary(self) -> None:
        self.sql(
            self.primary,
            f"CREATE USER '{_REPL_USER}'@'127.0.0.1' IDENTIFIED BY '{_REPL_PASSWORD}';"
            f" GRANT REPLICATION SLAVE ON *.* TO '{_REPL_USER}'@'127.0.0.1';"
            f" CREATE DATABASE {APP_DB};"
            f" CREATE USER '{APP_USER}'@'127.0.0.1' IDENTIFIED BY '{APP_PASSWORD}';"
            f" GRANT SELECT, INSERT, UPDATE, DELETE, CREATE, DROP, INDEX, ALTER"
            f" ON {APP_DB}.* TO '{APP_USER}'@'127.0.0.1';"
            # SHOW SLAVE STATUS (the replica's lag in seconds) needs it.
            f" GRANT SLAVE MONITOR ON *.* TO '{APP_USER}'@'127.0.0.1';",
        )

    def _init_replica(self, index: int) -> None:
        self.sql(
            self.replicas[index],
            "CHANGE MASTER TO MASTER_HOST='127.0.0.1',"
            f" MASTER_PORT={self.primary.port},"
            f" MASTER_USER='{_REPL_USER}', MASTER_PASSWORD='{_REPL_PASSWORD}',"
            " MASTER_USE_GTID=slave_pos, MASTER_CONNECT_RETRY=1; START SLAVE;",
        )

    def stop(self) -> None:
        """Kill every server this process started and delete their files."""
        if self._stopped:
            return
        self._stopped = True
        for node in (*self.replicas, self.primary):
            if node.name in self._processes:
                self._kill(node)
        shutil.rmtree(self._basedir, ignore_errors=True)

    def _signal(self, node: MariaDBNode, signum: signal.Signals) -> None:
        # The server's own pid (a runuser in between does not pass it on).
        with contextlib.suppress(OSError, ValueError):
            os.kill(int(node.pidfile.read_text().strip()), signum)

    def _kill(self, node: MariaDBNode) -> None:
        self._signal(node, signal.SIGKILL)
        process = self._processes[node.name]
        # A runuser in between stops itself when its child is stopped (job
        # control, as su does) and waits for a SIGCONT of its own to reap it.
        with contextlib.suppress(OSError):
            process.send_signal(signal.SIGCONT)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(30)

    # -- SQL ----------------------------------------------------------------------

    def sql(
        self, node: MariaDBNode, query: str, *, timeout: float = 30, names: bool = False
    ) -> str:
        """Run ``query`` as root on ``node`` (its socket); return tab-separated rows
        (with ``names``, the column names too: ``\\G`` then gives ``name: value``)."""
        cmd = [
            "mariadb", "--no-defaults", "-uroot", f"--socket={node.socket}",
            "--batch", *([] if names else ["--skip-column-names"]),
        ]  # fmt: skip
        try:
            # On stdin, not -e: ps would show a password inside the query.
            done = subprocess.run(
                cmd, input=query, capture_output=True, text=True, timeout=timeout
            )
        except subprocess.TimeoutExpired:
            raise ClusterError(f"mariadb on {node.name} timed out") from None
        if done.returncode != 0:
            raise ClusterError(f"mariadb on {node.name}: {done.stderr.strip()}")
        return done.stdout.strip()

    def gtid_pos(self, node: MariaDBNode) -> str:
        """The primary's ``gtid_binlog_pos`` or a replica's ``gtid_slave_pos``."""
        var = "gtid_binlog_pos" if node is self.primary else "gtid_slave_pos"
        return self.sql(node, f"SELECT @@global.{var}")

    def wait_replicated(self, timeout: float = 30) -> str:
        """Wait until every running replica applied the primary's GTID position."""
        target = self.gtid_pos(self.primary)
        for index, node in enumerate(self.replicas):
            if node.name not in self._stopped_nodes():
                self.wait_replicated_on(index, target, timeout=timeout)
        return target

    def wait_replicated_on(
        self, index: int, target: str | None = None, *, timeout: float = 30
    ) -> None:
        """Wait until replica ``index`` applied ``target`` (default: the primary's)."""
        target = target or self.gtid_pos(self.primary)
        node = self.replicas[index]
        poll(
            f"{node.name} to apply {target}",
            lambda: self.sql(node, f"SELECT MASTER_GTID_WAIT('{target}', 0)") == "0",
            timeout,
            0.02,
        )

    def _stopped_nodes(self) -> set[str]:
        return {
            name
            for name, process in self._processes.items()
            if process.poll() is not None
        }

    # -- faults ---------------------------------------------------------------------

    def stop_applying(self, index: int) -> None:
        """``STOP SLAVE SQL_THREAD``: the replica receives but applies nothing."""
        self.sql(self.replicas[index], "STOP SLAVE SQL_THREAD")

    def resume_applying(self, index: int) -> None:
        """``START SLAVE SQL_THREAD``."""
        self.sql(self.replicas[index], "START SLAVE SQL_THREAD")

    def delay_applying(self, index: int, *, seconds: int) -> None:
        """Make a replica apply each transaction ``seconds`` late (MASTER_DELAY)."""
        self.sql(
            self.replicas[index],
            f"STOP SLAVE; CHANGE MASTER TO MASTER_DELAY={int(seconds)}; START SLAVE",
        )

    def crash_replica(self, index: int) -> None:
        """Kill a replica's server process (SIGKILL)."""
        self._kill(self.replicas[index])

    def hang_replica(self, index: int) -> None:
        """Stop a replica's server (SIGSTOP), its sockets open: a hung host."""
        self._signal(self.replicas[index], signal.SIGSTOP)

    def resume_replica(self, index: int) -> None:
        """Let a hung replica run again (SIGCONT)."""
        self._signal(self.replicas[index], signal.SIGCONT)

    def hang_primary(self) -> None:
        """Stop the primary's server (SIGSTOP), its sockets open: a hung host."""
        self._signal(self.primary, signal.SIGSTOP)

    def resume_primary(self) -> None:
        """Let a hung primary run again (SIGCONT)."""
        self._signal(self.primary, signal.SIGCONT)

    def start_replica(self, index: int) -> None:
        """Start a stopped replica again; it resumes replicating."""
        node = self.replicas[index]
        self._start_node(node)
        self.sql(node, "START SLAVE")

    def crash_primary(self) -> None:
        """Kill the primary's server process (SIGKILL), as a failover starts."""
        self._kill(self.primary)

    def promote(self, index: int) -> None:
        """Make replica ``index`` the primary (``read_only = 0``), once it has
        applied everything it received."""
        promote(self, self.replicas[index])

    def follow(self, index: int, *, new_primary: int) -> None:
        """Make replica ``index`` replicate from replica ``new_primary`` (GTID)."""
        follow(self, self.replicas[index], self.replicas[new_primary])

    @property
    def current_primary(self) -> MariaDBNode:
        """The node that takes writes now: the primary, or a promoted replica."""
        stopped = self._stopped_nodes()
        for node in (self.primary, *self.replicas):
            if node.name not in stopped and takes_writes(self, node):
                return node
        raise ClusterError("no node of the cluster takes writes")

    def heal(self) -> None:
        """Undo faults: start crashed replicas, resume applying, catch up.

        A failover is not undone (MariaDB has no rewind): start a new cluster.
        """
        for node in (self.primary, *self.replicas):
            self._signal(node, signal.SIGCONT)
        stopped = self._stopped_nodes()
        if self.primary.name in stopped or any(
            takes_writes(self, node)
            for node in self.replicas
            if node.name not in stopped
        ):
            raise ClusterError(
                "heal() cannot undo a failover of MariaDB: start a new cluster"
            )
        for index, node in enumerate(self.replicas):
            if node.name in self._stopped_nodes():
                self.start_replica(index)
            self.sql(node, "START SLAVE")  # a no-op for running threads
        self.wait_replicated()


def takes_writes(cluster: MariaDBCluster, node: MariaDBNode) -> bool:
    """Is ``node`` writable (``@@global.read_only = 0``)?"""
    return cluster.sql(node, "SELECT @@global.read_only", timeout=10) == "0"


def _status(cluster: MariaDBCluster, node: MariaDBNode) -> dict[str, str]:
    out = cluster.sql(node, "SHOW SLAVE STATUS\\G", names=True)
    fields = (line.strip().partition(":") for line in out.splitlines())
    status = {key: value.strip() for key, colon, value in fields if colon}
    if not status:
        raise ClusterError(f"{node.name} is not a replica")
    return status


def _applied(cluster: MariaDBCluster, node: MariaDBNode) -> bool:
    """Has ``node`` executed all it received from its primary?"""
    status = _status(cluster, node)
    return status.get("Master_Log_File") == status.get(
        "Relay_Master_Log_File"
    ) and status.get("Read_Master_Log_Pos") == status.get("Exec_Master_Log_Pos")


def promote(cluster: MariaDBCluster, node: MariaDBNode) -> None:
    """Make replica ``node`` the primary once it applied all it received."""
    cluster.sql(node, "STOP SLAVE IO_THREAD")
    poll(
        f"{node.name} to apply its relay log", lambda: _applied(cluster, node), 60, 0.05
    )
    cluster.sql(node, "STOP SLAVE; RESET SLAVE ALL; SET GLOBAL read_only = 0")


def follow(cluster: MariaDBCluster, node: MariaDBNode, source: MariaDBNode) -> None:
    """Make replica ``node`` replicate from ``source`` by GTID (slave_pos)."""
    cluster.sql(
        node,
        f"STOP SLAVE; CHANGE MASTER TO MASTER_HOST='127.0.0.1', "
        f"MASTER_PORT={source.port}, MASTER_USE_GTID=slave_pos; START SLAVE",
    )
    target = cluster.sql(source, "SELECT @@global.gtid_binlog_pos")

    def applied() -> bool:
        status = _status(cluster, node)
        if status.get("Last_IO_Error"):
            raise ClusterError(
                f"{node.name} cannot follow {source.name} (it may have applied "
                f"more than {source.name} has): {status['Last_IO_Error']}"
            )
        query = f"SELECT MASTER_GTID_WAIT('{target}', 0)"
        return status.get("Slave_IO_Running") == "Yes" and (
            cluster.sql(node, query) == "0"
        )

    poll(f"{node.name} to follow {source.name}", applied, 60, 0.05)
