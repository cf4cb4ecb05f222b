"""A Patroni cluster, the HA manager most PostgreSQL users run: etcd, and
three PostgreSQL members each under its own Patroni, on loopback.

Patroni comes from PyPI (``patroni[etcd]``), etcd from Debian's
``etcd-server``; ``tools/install-servers`` installs both. Patroni runs as
the ``postgres`` OS user when this process is root, as PostgreSQL must.
Controls: ``switchover``, ``kill_postmaster`` (Patroni starts it again in
place), ``hang`` (SIGSTOP of a member's postmaster and its Patroni, or of
every process of the member) and ``resume``.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._hang import hang as hang_server
from ._hang import resume as resume_server
from ._servers import (
    OWNER,
    SERVER_USER,
    ClusterError,
    PgNode,
    find_binary,
    find_pg_bindir,
    free_ports,
    poll,
)

__all__ = [
    "PatroniCluster",
    "PatroniMember",
    "find_etcd",
    "find_haproxy",
    "find_patroni",
]

PREFIX = "routing_db_patroni_"
SCOPE = "routing-db-test"


def find_etcd() -> Path | None:
    """etcd's server binary, if installed."""
    return find_binary("etcd", env="ROUTING_DB_ETCD", default="/usr/bin/etcd")


def find_haproxy() -> Path | None:
    """HAProxy's binary, if installed."""
    return find_binary("haproxy", env="ROUTING_DB_HAPROXY", default="/usr/sbin/haproxy")


# Patroni's documented HAProxy set-up: a port for the leader, checked with
# GET /primary on each member's REST API, one for the replicas (/replica),
# sessions shut down when a member is marked down.
_HAPROXY = """\
global
    maxconn 500
defaults
    mode tcp
    timeout connect 4s
    timeout client 30m
    timeout server 30m
    timeout check 5s
listen primary
    bind 127.0.0.1:{primary}
    option httpchk OPTIONS /primary
    http-check expect status 200
    default-server inter 3s fall 3 rise 2 on-marked-down shutdown-sessions
{primary_servers}
listen replicas
    bind 127.0.0.1:{replicas}
    balance roundrobin
    option httpchk OPTIONS /replica
    http-check expect status 200
    default-server inter 3s fall 3 rise 2 on-marked-down shutdown-sessions
{replica_servers}
"""


# Where tools/install-servers puts Patroni when root: a Python the postgres
# OS user can run (this process's may live in root's home).
INSTALLED = Path("/opt/routing-db-patroni/bin/patroni")


def find_patroni() -> Path | None:
    """The ``patroni`` command to run (``ROUTING_DB_PATRONI``, then the one
    ``tools/install-servers`` installs, then this environment's)."""
    candidates = [os.environ.get("ROUTING_DB_PATRONI"), str(INSTALLED)]
    if os.geteuid() != 0:
        candidates.append(str(Path(sys.executable).parent / "patroni"))
    candidates.append(shutil.which("patroni"))
    for candidate in candidates:
        if candidate and Path(candidate).exists():
            return Path(candidate)
    return None


@dataclass(eq=False)
class PatroniMember:
    """One member: its PostgreSQL server and its Patroni's REST API."""

    name: str
    node: PgNode
    rest_port: int
    config: Path
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def rest_url(self) -> str:
        """Patroni's REST API of this member."""
        return f"http://127.0.0.1:{self.rest_port}"

    @property
    def port(self) -> int:
        """Its PostgreSQL port."""
        return self.node.port


class PatroniCluster:
    """etcd and three Patroni members; see the module docstring."""

    def __init__(self, basedir: Path, members: list[PatroniMember]) -> None:
        self.basedir = basedir
        self.members = members
        self._etcd: subprocess.Popen[bytes] | None = None
        self._stopped = False
        self.driver = "asyncpg"
        self.ttl = 10
        self.loop_wait = 1
        self._patroni = "patroni"
        self._haproxy: subprocess.Popen[bytes] | None = None
        self.haproxy_ports = (0, 0)

    # -- construction -----------------------------------------------------

    @classmethod
    def start(cls, members: int = 3, *, ttl: int = 10) -> PatroniCluster:
        """Start etcd and ``members`` Patroni members; return once one leads
        and every other streams from it."""
        etcd, patroni = find_etcd(), find_patroni()
        if etcd is None or patroni is None:
            raise ClusterError(
                "Patroni tests need etcd (Debian: apt-get install etcd-server) and "
                "Patroni (pip install 'patroni[etcd]'); tools/install-servers "
                "installs both"
            )
        bindir = find_pg_bindir()
        basedir = Path(tempfile.mkdtemp(prefix=PREFIX))
        (basedir / OWNER).write_text(str(os.getpid()))
        os.chmod(basedir, 0o755)
        ports = free_ports(2 + 2 * members)
        client, peer, rest = ports[0], ports[1], ports[2:]
        items = []
        for i in range(members):
            name = f"pg{i}"
            node = PgNode(
                name, "127.0.0.1", rest[2 * i], datadir=basedir / name / "data"
            )
            items.append(
                PatroniMember(name, node, rest[2 * i + 1], basedir / f"{name}.yml")
            )
        cluster = cls(basedir, items)
        cluster.ttl = ttl
        cluster._patroni = str(patroni)
        atexit.register(cluster.stop)
        try:
            cluster._start_etcd(etcd, client, peer)
            for member in items:
                cluster._write_config(member, bindir, client)
                if os.geteuid() == 0:
                    (basedir / member.name).mkdir(mode=0o700)
                    shutil.chown(basedir / member.name, SERVER_USER, SERVER_USER)
                    shutil.chown(member.config, SERVER_USER, SERVER_USER)
                else:
                    (basedir / member.name).mkdir(mode=0o700)
            cluster._start_patroni(items[0], patroni)
            poll("the first member to lead", lambda: cluster.leader() is items[0], 90)
            for member in items[1:]:
                cluster._start_patroni(member, patroni)
            cluster.wait_streaming()
        except BaseException:
            cluster.stop()
            raise
        return cluster

    def _start_etcd(self, etcd: Path, client: int, peer: int) -> None:
        log = (self.basedir / "etcd.log").open("wb")
        self._etcd = subprocess.Popen(
            [
                str(etcd), "--name", "e0",
                "--data-dir", str(self.basedir / "etcd"),
                "--listen-client-urls", f"http://127.0.0.1:{client}",
                "--advertise-client-urls", f"http://127.0.0.1:{client}",
                "--listen-peer-urls", f"http://127.0.0.1:{peer}",
                "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
                "--initial-cluster", f"e0=http://127.0.0.1:{peer}",
            ],
            stdout=log, stderr=subprocess.STDOUT, cwd="/",
        )  # fmt: skip

        def healthy() -> bool:
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{client}/health", timeout=1
                ) as answer:
                    return bool(json.load(answer).get("health") == "true")
            except OSError:
                return False

        poll("etcd to start", healthy, 30)

    def _write_config(self, member: PatroniMember, bindir: Path, etcd: int) -> None:
        # JSON is YAML: no YAML writer needed.
        node = member.node
        config: dict[str, Any] = {
            "scope": SCOPE,
            "name": member.name,
            "log": {"dir": str(self.basedir / member.name), "level": "INFO"},
            "restapi": {
                "listen": f"127.0.0.1:{member.rest_port}",
                "connect_address": f"127.0.0.1:{member.rest_port}",
            },
            "etcd3": {"hosts": [f"127.0.0.1:{etcd}"]},
            "bootstrap": {
                "dcs": {
                    "ttl": self.ttl,
                    "loop_wait": self.loop_wait,
                    "retry_timeout": max(1, (self.ttl - self.loop_wait) // 2 - 1),
                    "maximum_lag_on_failover": 64 * 1024 * 1024,
                    "postgresql": {
                        "use_pg_rewind": True,
                        "parameters": {
                            "wal_level": "replica",
                            "hot_standby": "on",
                            "wal_log_hints": "on",
                            "max_wal_senders": 10,
                            "max_replication_slots": 10,
                            "wal_keep_size": "256MB",
                            "max_connections": 200,
                            "fsync": "off",
                            "full_page_writes": "on",
                            "shared_buffers": "32MB",
                        },
                    },
                },
                "initdb": [
                    {"encoding": "UTF8"},
                    {"locale": "C"},
                    {"auth": "trust"},
                    "no-sync",
                ],
            },
            "postgresql": {
                "listen": f"127.0.0.1:{node.port}",
                "connect_address": f"127.0.0.1:{node.port}",
                "data_dir": str(node.datadir),
                "bin_dir": str(bindir),
                "pgpass": str(self.basedir / member.name / "pgpass"),
                "authentication": {
                    "superuser": {"username": "postgres", "password": "postgres"},
                    "replication": {"username": "postgres", "password": "postgres"},
                    "rewind": {"username": "postgres", "password": "postgres"},
                },
                "parameters": {
                    "unix_socket_directories": str(self.basedir / member.name),
                    "wal_retrieve_retry_interval": "200ms",
                },
                "pg_hba": [
                    "local all all trust",
                    "host all all 127.0.0.1/32 trust",
                    "host replication all 127.0.0.1/32 trust",
                ],
            },
        }
        member.config.write_text(json.dumps(config, indent=1))

    def _start_patroni(self, member: PatroniMember, patroni: Path) -> None:
        cmd = [str(patroni), str(member.config)]
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", SERVER_USER, "--", *cmd]
        log = (self.basedir / f"{member.name}.patroni.log").open("wb")
        member.process = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, cwd="/",
            start_new_session=True,
        )  # fmt: skip

    # -- state ------------------------------------------------------------

    def with_driver(self, driver: str) -> PatroniCluster:
        """The same cluster, its URLs for ``driver``."""
        view = object.__new__(PatroniCluster)
        view.__dict__.update(self.__dict__)
        view.driver = driver
        return view

    @property
    def urls(self) -> list[str]:
        """SQLAlchemy URLs of every member (for ``from_cluster``)."""
        return [member.node.url_for(self.driver) for member in self.members]

    @property
    def rest_urls(self) -> list[str]:
        """Every member's Patroni REST API."""
        return [member.rest_url for member in self.members]

    def member(self, name: str) -> PatroniMember:
        """The member called ``name``."""
        return next(member for member in self.members if member.name == name)

    def views(self, timeout: float = 0.5) -> list[dict[str, Any]]:
        """``/cluster`` as each member that answers within ``timeout`` sees it
        (asked at once: a hung member costs the timeout once, not per member)."""

        def ask(member: PatroniMember) -> dict[str, Any] | None:
            try:
                with urllib.request.urlopen(
                    f"{member.rest_url}/cluster", timeout=timeout
                ) as answer:
                    data: dict[str, Any] = json.load(answer)
                    return data
            except (OSError, ValueError):
                return None

        with ThreadPoolExecutor(len(self.members)) as workers:
            answers = list(workers.map(ask, self.members))
        return [answer for answer in answers if answer is not None]

    def view(self, timeout: float = 0.5) -> dict[str, Any] | None:
        """``/cluster`` as the first member that answers sees it."""
        views = self.views(timeout)
        return views[0] if views else None

    def leader(self) -> PatroniMember | None:
        """The member every answering member holds as leader, running (None:
        none, or they disagree)."""
        named = set()
        for view in self.views():
            leaders = [
                item["name"]
                for item in view.get("members", [])
                if item.get("role") == "leader" and item.get("state") == "running"
            ]
            named.add(leaders[0] if leaders else None)
        name = named.pop() if len(named) == 1 else None
        return None if name is None else self.member(name)

    def start_haproxy(self) -> tuple[int, int]:
        """Start HAProxy as Patroni documents it; its (leader, replicas) ports."""
        haproxy = find_haproxy()
        if haproxy is None:
            raise ClusterError("HAProxy is not installed (apt-get install haproxy)")
        primary, replicas = free_ports(2)
        servers = "\n".join(
            f"    server {m.name} 127.0.0.1:{m.port} check port {m.rest_port}"
            for m in self.members
        )
        config = self.basedir / "haproxy.cfg"
        config.write_text(
            _HAPROXY.format(
                primary=primary,
                replicas=replicas,
                primary_servers=servers,
                replica_servers=servers,
            )
        )
        log = (self.basedir / "haproxy.log").open("wb")
        self._haproxy = subprocess.Popen(
            [str(haproxy), "-db", "-f", str(config)],
            stdout=log, stderr=subprocess.STDOUT, cwd="/",
        )  # fmt: skip
        self.haproxy_ports = (primary, replicas)
        leader = self.leader()
        assert leader is not None
        poll(
            "HAProxy to reach the leader",
            lambda: self._through(primary) == "f",
            30,
            0.1,
        )
        return primary, replicas

    def _through(self, port: int) -> str:
        bindir = find_pg_bindir()
        done = subprocess.run(
            [
                str(bindir / "psql"), "-X", "-A", "-t", "-h", "127.0.0.1",
                "-p", str(port), "-U", "postgres", "-d", "postgres",
                "-c", "SELECT pg_is_in_recovery()",
            ],
            capture_output=True, text=True, timeout=10, cwd="/",
        )  # fmt: skip
        if done.returncode != 0:
            raise ClusterError(done.stderr.strip())
        return done.stdout.strip()

    def haproxy_urls(self) -> tuple[str, str]:
        """(writer URL, reader URL) through HAProxy's ports, for this driver."""
        primary, replicas = self.haproxy_ports
        return (
            f"postgresql+{self.driver}://postgres@127.0.0.1:{primary}/postgres",
            f"postgresql+{self.driver}://postgres@127.0.0.1:{replicas}/postgres",
        )

    def stop_haproxy(self) -> None:
        """Stop HAProxy, if started."""
        process, self._haproxy = self._haproxy, None
        if process is not None and process.poll() is None:
            process.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(10)

    def wait_streaming(self, timeout: float = 90) -> None:
        """Wait until one member leads and every other streams from it."""

        def ready() -> bool:
            view = self.view() or {}
            items = view.get("members", [])
            leaders = [i for i in items if i.get("role") == "leader"]
            streaming = [i for i in items if i.get("state") == "streaming"]
            return (
                len(items) == len(self.members)
                and len(leaders) == 1
                and leaders[0].get("state") == "running"
                and len(streaming) == len(self.members) - 1
            )

        poll("every Patroni member to stream from the leader", ready, timeout, 0.1)

    def sql(self, member: PatroniMember, query: str, *, timeout: float = 30) -> str:
        """Run ``query`` with psql on ``member``; the output, unaligned."""
        bindir = find_pg_bindir()
        cmd = [
            str(bindir / "psql"), "-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1",
            "-h", "127.0.0.1", "-p", str(member.port), "-U", "postgres",
            "-d", "postgres", "-c", query,
        ]  # fmt: skip
        done = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, cwd="/"
        )
        if done.returncode != 0:
            raise ClusterError(f"{member.name}: {done.stderr.strip()}")
        return done.stdout.strip()

    # -- faults -----------------------------------------------------------

    def switchover(self, candidate: PatroniMember | None = None) -> PatroniMember:
        """A planned switchover (``patronictl switchover``); the new leader."""
        leader = self.leader()
        if leader is None:
            raise ClusterError("no leader to switch over from")
        candidate = candidate or next(m for m in self.members if m is not leader)
        patronictl = Path(self._patroni).parent / "patronictl"
        done = subprocess.run(
            [
                str(patronictl), "-c", str(leader.config), "switchover",
                "--leader", leader.name, "--candidate", candidate.name, "--force",
            ],
            capture_output=True, text=True, timeout=120, cwd="/",
        )  # fmt: skip
        if done.returncode != 0:
            raise ClusterError(f"switchover failed: {done.stderr or done.stdout}")
        poll(f"{candidate.name} to lead", lambda: self.leader() is candidate, 60)
        return candidate

    def kill_postmaster(self, member: PatroniMember) -> None:
        """SIGKILL ``member``'s postmaster; Patroni starts it again in place."""
        pid = self._postmaster(member)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)

    def hang(self, member: PatroniMember, *, every_process: bool = False) -> None:
        """Stop ``member``'s Patroni and postmaster (its running backends go
        on answering, as on a host whose supervisor hung), or with
        ``every_process`` every process of its server too (a hung host)."""
        assert member.process is not None
        self._signal_patroni(member, signal.SIGSTOP)
        if every_process:
            hang_server(member.node)
        else:
            os.kill(self._postmaster(member), signal.SIGSTOP)

    def resume(self, member: PatroniMember) -> None:
        """Let every process of ``member`` run again."""
        resume_server(member.node)
        self._signal_patroni(member, signal.SIGCONT)

    def _signal_patroni(self, member: PatroniMember, signum: signal.Signals) -> None:
        assert member.process is not None
        # runuser's child: signal the whole session Patroni was started in
        # (runuser, Patroni), never its PostgreSQL (a session of its own).
        for pid in _session(member.process.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    def _postmaster(self, member: PatroniMember) -> int:
        assert member.node.datadir is not None
        pidfile = member.node.datadir / "postmaster.pid"
        return int(pidfile.read_text().split()[0])

    # -- lifetime ---------------------------------------------------------

    def heal(self, timeout: float = 120) -> None:
        """Resume every member and wait until one leads and all stream."""
        for member in self.members:
            self.resume(member)
        self.wait_streaming(timeout)

    def stop(self) -> None:
        """Stop every Patroni (and so its PostgreSQL), etcd, and delete the files."""
        if self._stopped:
            return
        self._stopped = True
        for member in self.members:
            with contextlib.suppress(Exception):
                self.resume(member)
        for member in self.members:
            if member.process is not None and member.process.poll() is None:
                self._signal_patroni(member, signal.SIGTERM)
        for member in self.members:
            if member.process is not None:
                try:
                    member.process.wait(30)
                except subprocess.TimeoutExpired:
                    self._signal_patroni(member, signal.SIGKILL)
            with contextlib.suppress(Exception):  # a postgres left behind
                os.kill(self._postmaster(member), signal.SIGQUIT)
        self.stop_haproxy()
        if self._etcd is not None:
            self._etcd.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._etcd.wait(10)
        if not os.environ.get("ROUTING_DB_KEEP"):
            shutil.rmtree(self.basedir, ignore_errors=True)

    def __enter__(self) -> PatroniCluster:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _session(leader: int) -> list[int]:
    """The processes of the session ``leader`` started (Linux ``/proc``)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            # state, ppid, pgrp, session
            if int(fields[3]) == leader:
                pids.append(int(entry.name))
    return pids
