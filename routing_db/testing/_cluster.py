"""A throwaway PostgreSQL primary with streaming replicas, and fault controls."""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import copy
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

from sqlalchemy.engine import make_url

from . import _hang
from . import _hang as hang
from ._faults import ReplicatedCluster, async_form
from ._servers import (
    INSTALL_HINT,
    OWNER,
    PREFIX,
    SERVER_USER,
    ClusterError,
    PgNode,
    find_pg_bindir,
    free_ports,
    poll,
    reap_orphans,
)

__all__ = [
    "ClusterError",
    "PgNode",
    "PostgresCluster",
    "find_pg_bindir",
    "reap_orphans",
]

# Reruns of a harness query a standby cancelled for a conflict with replay.
_CONFLICT_RERUNS = 5


class PostgresCluster(ReplicatedCluster[PgNode]):
    """A primary and its streaming replicas, with controls to inject faults."""

    def __init__(
        self,
        primary: PgNode,
        replicas: Sequence[PgNode],
        *,
        bindir: Path | None = None,
        basedir: Path | None = None,
    ) -> None:
        self.primary = primary
        self.replicas = list(replicas)
        self._shape = len(self.replicas)  # replicas beyond it came from add_standby
        self._bindir = bindir
        self._basedir = basedir
        self._stopped = False
        self.driver = "asyncpg"

    # -- construction -----------------------------------------------------

    @classmethod
    def external(cls, writer_url: str, replica_urls: Sequence[str]) -> PostgresCluster:
        """Use servers someone else runs (no process control, SQL controls only)."""

        def node(name: str, url: str) -> PgNode:
            u = make_url(url)
            return PgNode(
                name=name,
                host=u.host or "127.0.0.1",
                port=u.port or 5432,
                user=u.username or "postgres",
                dbname=u.database or "postgres",
                password=u.password if isinstance(u.password, str) else None,
            )

        cluster = cls(
            node("primary", writer_url),
            [node(f"replica{i}", url) for i, url in enumerate(replica_urls)],
        )
        return cluster.with_driver(make_url(writer_url).get_driver_name())

    @classmethod
    def from_env(cls) -> PostgresCluster | None:
        """An external cluster from ``ROUTING_DB_TEST_*_URL(S)``, or None."""
        writer = os.environ.get("ROUTING_DB_TEST_WRITER_URL")
        if not writer:
            return None
        replicas = os.environ.get("ROUTING_DB_TEST_REPLICA_URLS", "")
        return cls.external(writer, [u.strip() for u in replicas.split(",") if u])

    @classmethod
    def start(cls, replicas: int = 2, *, bindir: Path | None = None) -> PostgresCluster:
        """initdb a primary, ``pg_basebackup -R`` replicas, wait until they stream."""
        bindir = bindir or find_pg_bindir()
        reap_orphans(bindir)
        basedir = Path(tempfile.mkdtemp(prefix=PREFIX))
        # Whose cluster this is: a later start() removes it if that process
        # died without stopping it (killed test run, SIGKILL, power cut...).
        (basedir / OWNER).write_text(str(os.getpid()))
        if os.geteuid() == 0:
            # PostgreSQL refuses to run as root; its files must belong to postgres.
            shutil.chown(basedir, SERVER_USER, None)
        ports = free_ports(1 + replicas)
        primary = PgNode("primary", "127.0.0.1", ports[0], datadir=basedir / "primary")
        standbys = [
            PgNode(f"replica{i}", "127.0.0.1", port, datadir=basedir / f"replica{i}")
            for i, port in enumerate(ports[1:])
        ]
        cluster = cls(primary, standbys, bindir=bindir, basedir=basedir)
        atexit.register(cluster.stop)
        try:
            cluster._init_primary()
            cluster._start_node(primary)
            for node in standbys:
                cluster._clone_replica(node)
                cluster._start_node(node)
            cluster.wait_streaming()
        except BaseException:
            cluster.stop()
            raise
        return cluster

    # -- processes ----------------------------------------------------------

    @property
    def owned(self) -> bool:
        """True when this process started the servers and can stop/crash them."""
        return self._basedir is not None

    def with_driver(self, driver: str) -> PostgresCluster:
        """The same servers, with URLs for ``driver`` (``asyncpg``, ``psycopg``)."""
        view = copy.copy(self)
        view.driver = driver
        return view

    @property
    def writer_url(self) -> str:
        """SQLAlchemy URL of the primary (for ``self.driver``)."""
        return self.primary.url_for(self.driver)

    @property
    def replica_urls(self) -> list[str]:
        """SQLAlchemy URLs of the replicas (for ``self.driver``)."""
        return [node.url_for(self.driver) for node in self.replicas]

    @property
    def urls(self) -> list[str]:
        """SQLAlchemy URLs of every node, the primary first (for ``from_cluster``)."""
        return [self.writer_url, *self.replica_urls]

    @property
    def current_primary(self) -> PgNode:
        """The node that takes writes now: the primary, or a promoted replica."""
        for node in (self.primary, *self.replicas):
            if self.is_running(node) and not in_recovery(self, node):
                return node
        raise ClusterError("no node of the cluster accepts writes")

    def _run(self, *args: str, timeout: float = 120) -> str:
        assert self._bindir is not None
        cmd = [str(self._bindir / args[0]), *args[1:]]
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", SERVER_USER, "--", *cmd]
        try:
            done = subprocess.run(
                cmd, capture_output=True, text=True, timeout=timeout, cwd="/"
            )
        except FileNotFoundError as exc:
            raise ClusterError(f"cannot run {cmd[0]}: {exc}") from None
        if done.returncode != 0:
            raise ClusterError(
                f"{' '.join(args[:2])} failed ({done.returncode}): "
                f"{done.stderr.strip() or done.stdout.strip()}"
            )
        return done.stdout

    def _conf(self, node: PgNode, **settings: str | int) -> None:
        assert node.datadir is not None
        lines = "".join(f"{key} = '{value}'\n" for key, value in settings.items())
        # Appended as the server user would write it; later lines win.
        with (node.datadir / "postgresql.conf").open("a") as conf:
            conf.write(lines)

    def _init_primary(self) -> None:
        node = self.primary
        assert node.datadir is not None
        self._run(
            "initdb", "-D", str(node.datadir), "-U", "postgres", "--auth=trust",
            "-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions",
        )  # fmt: skip
        self._conf(
            node,
            listen_addresses="127.0.0.1",
            port=node.port,
            unix_socket_directories=str(self._basedir),
            wal_level="replica",
            max_wal_senders=10,
            max_replication_slots=10,
            wal_keep_size="256MB",
            hot_standby="on",
            wal_log_hints="on",  # pg_rewind can turn an old primary into a standby
            fsync="off",
            full_page_writes="off",
            max_connections=300,
            shared_buffers="32MB",
        )

    def _clone_replica(self, node: PgNode, source: PgNode | None = None) -> None:
        assert node.datadir is not None
        source = source or self.primary
        self._run(
            "pg_basebackup", "-h", source.host, "-p", str(source.port),
            "-U", "postgres", "-D", str(node.datadir), "-R", "-X", "stream",
            "-c", "fast", "--no-sync",
        )  # fmt: skip
        self._standby_conf(node)

    def _standby_conf(self, node: PgNode) -> None:
        # Its own port and name (the copied configuration has the source's):
        # the name is what pg_stat_replication shows. It reconnects quickly
        # after its primary restarts (the default is 5 s).
        self._conf(
            node,
            port=node.port,
            cluster_name=node.name,
            wal_retrieve_retry_interval="200ms",
        )

    def _pg_ctl(self, node: PgNode, action: str, *extra: str) -> None:
        if node.datadir is None:
            raise ClusterError(
                f"{node.name} was not started by routing_db.testing: cannot {action} it"
            )
        try:
            self._run(
                "pg_ctl", action, "-D", str(node.datadir), "-w", "-t", "60",
                "-l", str(node.logfile), *extra,
            )  # fmt: skip
        except ClusterError as exc:
            raise ClusterError(
                f"{exc}\n--- {node.name} log ---\n{self.log(node)}"
            ) from None

    def log(self, node: PgNode, lines: int = 30) -> str:
        """The last lines of a node's server log."""
        if node.logfile is None or not node.logfile.exists():
            return ""
        return "\n".join(node.logfile.read_text(errors="replace").splitlines()[-lines:])

    def _start_node(self, node: PgNode) -> None:
        self._pg_ctl(node, "start")

    def stop(self) -> None:
        """Stop every server this process started and delete their files."""
        if self._stopped or not self.owned:
            return
        self._stopped = True
        for node in (*self.replicas, self.primary):
            if node.datadir is not None and (node.datadir / "postmaster.pid").exists():
                with contextlib.suppress(ClusterError):
                    self._run(
                        "pg_ctl", "stop", "-D", str(node.datadir), "-m", "immediate",
                        "-w", "-t", "30",
                    )  # fmt: skip
        if self._basedir is not None:
            shutil.rmtree(self._basedir, ignore_errors=True)

    # -- SQL ------------------------------------------------------------------

    def sql(self, node: PgNode, query: str, *, timeout: float = 30) -> str:
        """Run one query with psql on ``node``; return its unaligned output.

        A standby may cancel it for a conflict with replay (a short
        ``max_standby_streaming_delay``, even one its own reload just set):
        then it runs again, a few times.
        """
        psql = (
            str(self._bindir / "psql") if self._bindir else shutil.which("psql")
        ) or "psql"
        env = dict(os.environ)
        if node.password is not None:
            env["PGPASSWORD"] = node.password  # not on the command line: ps shows it
        for reruns_left in range(_CONFLICT_RERUNS, -1, -1):
            try:
                done = subprocess.run(
                    [psql, "-XAtq", "-v", "ON_ERROR_STOP=1", "-d", node.dsn,
                     "-c", query],
                    capture_output=True, text=True, timeout=timeout, env=env,
                )  # fmt: skip
            except FileNotFoundError:
                raise ClusterError("psql was not found; " + INSTALL_HINT) from None
            if done.returncode == 0:
                return done.stdout.strip()
            if not reruns_left or "conflict with recovery" not in done.stderr:
                break
        raise ClusterError(f"{node.name}: {query!r} failed: {done.stderr.strip()}")

    # -- waiting ----------------------------------------------------------------

    def wait_streaming(self, timeout: float = 60) -> None:
        """Wait until every replica streams from the primary."""
        want = len(self.replicas)
        query = "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'"
        poll(
            f"{want} streaming replicas",
            lambda: int(self.sql(self.primary, query)) >= want,
            timeout,
            0.05,
        )

    def wait_replicated(
        self, replicas: Sequence[PgNode] | None = None, timeout: float = 30
    ) -> str:
        """Wait until ``replicas`` (default all) replayed the primary's WAL position.

        After a failover, give the standbys to wait for: they are compared
        with the node that takes writes now.
        """
        writer = self.primary if replicas is None else self.current_primary
        lsn = self.sql(writer, "SELECT pg_current_wal_lsn()")
        query = f"SELECT pg_wal_lsn_diff(pg_last_wal_replay_lsn(), '{lsn}') >= 0"
        for node in self.replicas if replicas is None else replicas:
            poll(
                f"{node.name} to replay {lsn}",
                lambda node=node: self.sql(node, query) == "t",  # type: ignore[misc]
                timeout,
                0.02,
            )
        return lsn

    # -- faults -------------------------------------------------------------------

    def stop_replica(self, index: int) -> None:
        """Stop a replica cleanly (``pg_ctl stop -m fast``)."""
        self._pg_ctl(self.replicas[index], "stop", "-m", "fast")

    def crash_replica(self, index: int) -> None:
        """Crash a replica (``pg_ctl stop -m immediate``: no shutdown checkpoint)."""
        self._pg_ctl(self.replicas[index], "stop", "-m", "immediate")

    def start_replica(self, index: int, *, wait_streaming: bool = True) -> None:
        """Start a stopped replica and, by default, wait until it streams again."""
        self._start_node(self.replicas[index])
        if wait_streaming:
            self.wait_streaming()

    def restart_primary(self) -> None:
        """Restart the primary (``pg_ctl restart -m fast``)."""
        self._pg_ctl(self.primary, "restart", "-m", "fast")

    def crash_primary(self) -> None:
        """Crash the primary (``pg_ctl stop -m immediate``), as a failover starts."""
        self._pg_ctl(self.primary, "stop", "-m", "immediate")

    def promote(self, node: int | PgNode) -> None:
        """Promote a standby (``pg_ctl promote``): replica ``node``, or that node.

        Returns once it takes writes.
        """
        promote(self, self._node(node))

    async def apromote(self, node: int | PgNode) -> None:
        """Async form of ``promote`` (a node too, not only a replica's index)."""
        await asyncio.to_thread(self.promote, node)

    def follow(self, index: int, *, new_primary: int) -> None:
        """Make replica ``index`` a standby of replica ``new_primary`` (promoted).

        Its ``primary_conninfo`` is changed and reloaded; if it replayed past
        the point where the new primary forked off, it is rewound instead.
        """
        repoint(self, self.replicas[index], self.replicas[new_primary])

    def rebuild_as_standby(self, node: PgNode, *, of: int | PgNode) -> None:
        """Make ``node`` (an old primary, say) a standby of replica ``of``.

        ``pg_rewind`` when it can, a fresh ``pg_basebackup`` otherwise.
        """
        rebuild(self, node, self._node(of))

    def restart_in_recovery(self, node: PgNode, *, of: int | PgNode) -> None:
        """Restart ``node`` (an old primary, say) as a standby of replica ``of``
        without rewinding it, as Patroni does before ``pg_rewind``: if it
        wrote what ``of`` never received, it cannot follow ``of``."""
        restart_in_recovery(self, node, self._node(of))

    def _node(self, node: int | PgNode) -> PgNode:
        return self.replicas[node] if isinstance(node, int) else node

    def add_standby(self) -> PgNode:
        """A new standby of the node taking writes, from a base backup; streaming."""
        node = add_standby(self)
        self.replicas.append(node)
        return node

    def hang_replica(self, index: int) -> None:
        """Stop every process of replica ``index`` (SIGSTOP), sockets open: a
        hung host. ``resume_replica`` (or ``heal``) lets it run again."""
        _hang.hang(self.replicas[index])

    def resume_replica(self, index: int) -> None:
        """Let a hung replica run again (SIGCONT)."""
        _hang.resume(self.replicas[index])

    def hang_primary(self) -> None:
        """Stop every process of the primary (SIGSTOP), sockets open: a hung
        host, or one behind a partition. ``resume_primary`` (or ``heal``) lets
        it run again."""
        _hang.hang(self.primary)

    def resume_primary(self) -> None:
        """Let a hung primary run again (SIGCONT)."""
        _hang.resume(self.primary)

    def stop_streaming(self, index: int) -> None:
        """Point replica ``index``'s ``primary_conninfo`` at a closed port and
        reload: its WAL receiver stops and cannot reconnect (it keeps serving)."""
        node = self.replicas[index]
        (port,) = free_ports(1)
        self.sql(
            node,
            f"ALTER SYSTEM SET primary_conninfo = 'host=127.0.0.1 port={port} "
            f"user={node.user} connect_timeout=1'",
        )
        self.sql(node, "SELECT pg_reload_conf()")
        poll(
            f"{node.name} to stop streaming",
            lambda: self.sql(node, "SELECT count(*) FROM pg_stat_wal_receiver") == "0",
            30,
            0.05,
        )

    def resume_streaming(self, index: int) -> None:
        """Point replica ``index`` back at the node taking writes; wait until it
        streams."""
        repoint(self, self.replicas[index], self.current_primary)

    def pause_replay(self, index: int) -> None:
        """Pause WAL replay on a replica (it keeps receiving WAL)."""
        node = self.replicas[index]
        self.sql(node, "SELECT pg_wal_replay_pause()")
        poll(
            f"{node.name} replay to pause",
            lambda: (
                self.sql(node, "SELECT pg_get_wal_replay_pause_state()") == "paused"
            ),
            10,
            0.02,
        )

    def resume_replay(self, index: int) -> None:
        """Resume WAL replay on a replica."""
        self.sql(self.replicas[index], "SELECT pg_wal_replay_resume()")

    def is_running(self, node: PgNode) -> bool:
        """True when ``node`` accepts connections."""
        try:
            self.sql(node, "SELECT 1", timeout=5)
        except ClusterError:
            return False
        return True

    def heal(self) -> None:
        """Return to the shape the cluster started with.

        Stopped servers start, replay resumes; after a failover the primary
        takes writes again (the promoted node's data is kept: it is rewound
        back to a standby after a clean switchover); standbys added since are
        removed.
        """
        heal(self, original_replicas=self._shape)
        del self.replicas[self._shape :]
        self.wait_streaming()
        self.wait_replicated()

    astop_replica = async_form(stop_replica)
    acrash_replica = async_form(crash_replica)
    astart_replica = async_form(start_replica)
    arestart_primary = async_form(restart_primary)
    arebuild_as_standby = async_form(rebuild_as_standby)
    aadd_standby = async_form(add_standby)
    astop_streaming = async_form(stop_streaming)
    aresume_streaming = async_form(resume_streaming)
    apause_replay = async_form(pause_replay)
    aresume_replay = async_form(resume_replay)
    await_replicated = async_form(wait_replicated)
    aheal = async_form(heal)


def in_recovery(cluster: PostgresCluster, node: PgNode) -> bool:
    """Is ``node`` a standby (``pg_is_in_recovery()``)?"""
    return cluster.sql(node, "SELECT pg_is_in_recovery()", timeout=10) == "t"


def streams_from(cluster: PostgresCluster, source: PgNode, node: PgNode) -> bool:
    """Does ``node`` stream WAL from ``source`` right now?"""
    query = (
        "SELECT count(*) FROM pg_stat_replication "
        f"WHERE application_name = '{node.name}' AND state = 'streaming'"
    )
    return cluster.sql(source, query, timeout=10) == "1"


def promote(cluster: PostgresCluster, node: PgNode) -> None:
    """``pg_ctl promote`` ``node`` and wait until it accepts writes."""
    cluster._pg_ctl(node, "promote")
    poll(
        f"{node.name} to accept writes",
        lambda: not in_recovery(cluster, node),
        60,
        0.02,
    )


def _conninfo(source: PgNode) -> str:
    return f"host={source.host} port={source.port} user={source.user}"


def repoint(cluster: PostgresCluster, node: PgNode, source: PgNode) -> None:
    """Make standby ``node`` stream from ``source``; rebuild it if it cannot.

    ``primary_conninfo`` is changed with ``ALTER SYSTEM`` and a reload; the
    standby follows ``source``'s new timeline (``recovery_target_timeline``
    is ``latest``). One that replayed past the point where ``source`` forked
    off cannot follow: it is rewound instead.
    """
    if _replayed_past_fork(cluster, source, node):
        rebuild(cluster, node, source)
        return
    try:
        cluster.sql(node, f"ALTER SYSTEM SET primary_conninfo = '{_conninfo(source)}'")
        cluster.sql(node, "SELECT pg_reload_conf()")
        poll(
            f"{node.name} to follow {source.name}'s timeline",
            lambda: follows(cluster, source, node),
            15,
            0.05,
        )
    except ClusterError:
        rebuild(cluster, node, source)


def _replayed_past_fork(cluster: PostgresCluster, source: PgNode, node: PgNode) -> bool:
    # The fork point is the last line of source's timeline history file.
    walfile = cluster.sql(source, "SELECT pg_walfile_name(pg_current_wal_lsn())")
    timeline = walfile[:8]
    if int(timeline, 16) == 1:
        return False  # never promoted: nothing forked off
    history = cluster.sql(source, f"SELECT pg_read_file('pg_wal/{timeline}.history')")
    fork = history.splitlines()[-1].split()[1]
    query = f"SELECT pg_last_wal_replay_lsn() > '{fork}'::pg_lsn"
    return cluster.sql(node, query) == "t"


def follows(cluster: PostgresCluster, source: PgNode, node: PgNode) -> bool:
    """Does ``node`` stream ``source``'s current timeline?

    A standby that replayed past the point where ``source`` forked off may
    still connect and stream for a moment, but never receives that timeline.
    """
    walfile = cluster.sql(source, "SELECT pg_walfile_name(pg_current_wal_lsn())")
    received = cluster.sql(
        node, "SELECT coalesce(max(received_tli), 0) FROM pg_stat_wal_receiver"
    )
    return int(received) == int(walfile[:8], 16) and streams_from(cluster, source, node)


def rebuild(cluster: PostgresCluster, node: PgNode, source: PgNode) -> None:
    """Make ``node`` a standby of ``source``: ``pg_rewind``, else a new base backup."""
    assert node.datadir is not None
    if cluster.is_running(node):
        cluster._pg_ctl(node, "stop", "-m", "fast")
    try:
        # -R: standby.signal and source's primary_conninfo; pg_rewind first
        # runs crash recovery itself when the node was not shut down cleanly.
        cluster._run(
            "pg_rewind", "-D", str(node.datadir), "-R", "--no-sync",
            "--source-server", f"{_conninfo(source)} dbname={source.dbname}",
        )  # fmt: skip
    except ClusterError:
        shutil.rmtree(node.datadir, ignore_errors=True)
        cluster._clone_replica(node, source)
    else:
        cluster._standby_conf(node)  # the source's configuration was copied
    cluster._start_node(node)
    poll(
        f"{node.name} to stream from {source.name}",
        lambda: streams_from(cluster, source, node),
        60,
        0.05,
    )


def restart_in_recovery(cluster: PostgresCluster, node: PgNode, source: PgNode) -> None:
    """Restart ``node`` in recovery under ``source``, not rewound: as an HA
    manager restarts a demoted primary before ``pg_rewind`` (Patroni's
    ``starting``). If it wrote past the point where ``source`` forked off, it
    holds what the cluster threw away and never follows ``source``."""
    assert node.datadir is not None
    if cluster.is_running(node):
        cluster._pg_ctl(node, "stop", "-m", "fast")
    signal = node.datadir / "standby.signal"
    signal.touch()
    shutil.copymode(node.datadir / "postgresql.conf", signal)
    owner = node.datadir.stat()
    os.chown(signal, owner.st_uid, owner.st_gid)
    cluster._conf(node, primary_conninfo=_conninfo(source))
    cluster._start_node(node)
    poll(f"{node.name} to start in recovery", lambda: in_recovery(cluster, node), 60)


def add_standby(cluster: PostgresCluster) -> PgNode:
    """Start a new standby of the node taking writes; return it once it streams."""
    basedir = cluster._basedir
    if basedir is None:
        raise ClusterError("add_standby needs a cluster started by this process")
    (port,) = free_ports(1)
    name = f"replica{len(cluster.replicas)}"
    node = PgNode(name, "127.0.0.1", port, datadir=basedir / name)
    source = cluster.current_primary
    cluster._clone_replica(node, source)
    cluster._start_node(node)
    poll(f"{name} to stream", lambda: streams_from(cluster, source, node), 60, 0.05)
    return node


def heal(cluster: PostgresCluster, *, original_replicas: int) -> None:
    """Put the primary back in charge and the original standbys under it."""
    primary, replicas = cluster.primary, cluster.replicas
    if cluster.owned:
        for node in (primary, *replicas):
            hang.resume(node)
            if not cluster.is_running(node):
                cluster._start_node(node)
    for index, node in enumerate(replicas):
        if in_recovery(cluster, node):
            cluster.resume_replay(index)
    writer = cluster.current_primary
    if writer is not primary:  # after a failover: switch back
        rebuild(cluster, primary, writer)
        cluster.wait_replicated([primary])
        cluster._pg_ctl(writer, "stop", "-m", "fast")  # sends all its WAL first
        promote(cluster, primary)
        rebuild(cluster, writer, primary)
    for node in replicas[:original_replicas]:
        # A second primary (its writes go), or a standby that streams from
        # elsewhere: rewound, not repointed. Whether one left behind on an
        # old timeline could still follow shows only after a wait.
        if not in_recovery(cluster, node) or not streams_from(cluster, primary, node):
            rebuild(cluster, node, primary)
    for node in replicas[original_replicas:]:
        cluster._pg_ctl(node, "stop", "-m", "immediate")
        assert node.datadir is not None
        shutil.rmtree(node.datadir, ignore_errors=True)
