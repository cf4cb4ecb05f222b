"""``routing-db check``: is this writer/replica set-up what the router assumes?

Connects to every URL once (no pool), and checks: the writer is a primary;
each replica is a standby of *this* writer (same ``system_identifier``); its
lag; and whether ``(pool_size + max_overflow) x processes`` fits under each
server's ``max_connections`` minus the reserved slots. Warns when a pooler
(PgBouncer) sits in between and the ``pgbouncer`` option is off, and notes a
replica URL that reaches more than one server (a reader endpoint).
"""

from __future__ import annotations

import asyncio
import dataclasses

from sqlalchemy import text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import NullPool

from .._engines.make import create_engine, url_name
from .._retry import error_cause
from .._router.check import Seen, problem_of

__all__ = ["EngineReport", "check_setup"]

_ABOUT = text(
    "SELECT pg_is_in_recovery(), current_setting('max_connections')::int, "
    "current_setting('superuser_reserved_connections')::int, "
    "coalesce(current_setting('reserved_connections', true)::int, 0), "
    "CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() - '0/0'::pg_lsn "
    "ELSE pg_current_wal_lsn() - '0/0'::pg_lsn END, "
    "extract(epoch FROM clock_timestamp() - pg_last_xact_replay_timestamp()), "
    "inet_server_port()"
)
_SYSTEM_ID = text("SELECT system_identifier FROM pg_control_system()")
# Which server a connection reached (as routing_db tells servers apart).
_SERVER = text(
    "SELECT concat_ws(' ', inet_server_addr(), inet_server_port(), "
    "pg_postmaster_start_time())"
)
# Connections opened to each replica URL to see whether it reaches more than
# one server (a reader endpoint spreads new connections over its standbys).
_SAMPLES = 6


@dataclasses.dataclass
class EngineReport:
    """What ``check`` found about one URL."""

    name: str
    role: str
    reachable: bool = False
    in_recovery: bool | None = None
    system_identifier: int | None = None
    lsn: int | None = None
    replay_age: float | None = None
    connection_limit: int | None = None  # max_connections minus reserved
    pool_budget: int = 0  # (pool_size + max_overflow) x processes
    lag_bytes: int | None = None
    server_port: int | None = None  # as the server sees it (None: a socket)
    servers: int | None = None  # distinct servers its connections reached
    problems: list[str] = dataclasses.field(default_factory=list)
    warnings: list[str] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)

    def row(self) -> dict[str, object]:
        """One line of the table."""
        lag = "-" if self.lag_bytes is None else f"{self.lag_bytes} B"
        if self.lag_bytes and self.replay_age is not None:
            lag += f" / {self.replay_age:.1f} s"
        limit = "?" if self.connection_limit is None else self.connection_limit
        return {
            "engine": self.name,
            "role": self.role,
            "status": "FAIL" if self.problems else "ok",
            "in recovery": "?" if self.in_recovery is None else self.in_recovery,
            "lag": lag,
            "connections": f"{self.pool_budget}/{limit}",
        }


def _describe(error: BaseException, secrets: list[str]) -> str:
    state = getattr(error, "sqlstate", None)
    for item in (error, getattr(error, "orig", None), error.__cause__):
        state = state or getattr(item, "sqlstate", None)
    # Drivers do not echo passwords; masked anyway.
    message = error_cause(error, secrets)
    if state in ("28P01", "28000"):
        reason = "authentication failed (check the user and password)"
    elif isinstance(error, OSError) or isinstance(error.__cause__, OSError):
        reason = "unreachable"
    else:
        reason = "connection failed"
    if message.lower().startswith(reason):  # psycopg's "connection failed: ..."
        return message
    return f"{reason}: {message}"


async def _inspect(
    report: EngineReport, engine: AsyncEngine, secrets: list[str]
) -> None:
    try:
        async with engine.connect() as conn:
            row = (await conn.execute(_ABOUT)).one()
            report.reachable = True
            report.in_recovery = bool(row[0])
            report.connection_limit = int(row[1]) - int(row[2]) - int(row[3])
            report.lsn = None if row[4] is None else int(row[4])
            report.replay_age = None if row[5] is None else float(row[5])
            report.server_port = None if row[6] is None else int(row[6])
            try:
                report.system_identifier = int((await conn.scalar(_SYSTEM_ID)) or 0)
            except Exception:  # needs superuser or pg_monitor-like rights
                await conn.rollback()
                report.system_identifier = None
    except Exception as exc:
        report.problems.append(_describe(exc, secrets))


async def _count_servers(report: EngineReport, engine: AsyncEngine) -> None:
    # One connection after another (each new one is what a balancer spreads).
    seen: set[str] = set()
    try:
        for _ in range(_SAMPLES):
            async with engine.connect() as conn:
                seen.add(str(await conn.scalar(_SERVER)))
    except Exception:  # _inspect reports an unreachable URL
        return
    report.servers = len(seen)
    if len(seen) > 1:
        report.notes.append(
            f"this one URL reached {len(seen)} servers in {_SAMPLES} connections "
            "(a load-balanced reader endpoint): supported, each read is judged "
            "by the server its own connection reached"
        )


def _seen(report: EngineReport) -> Seen:
    # An unreachable server's failure is reported already (see _inspect).
    recovery, system = report.in_recovery, report.system_identifier
    return Seen(
        report.name,
        report.role,
        takes_writes=None if recovery is None else not recovery,
        clusters=None if system is None else frozenset({str(system)}),
    )


def _judge(writer: EngineReport, replicas: list[EngineReport]) -> None:
    # The role and cluster rules are the router's start-up check's own.
    primary = _seen(writer)
    for report in (writer, *replicas):
        problem = problem_of(_seen(report), primary)
        if problem is not None:
            report.problems.append(problem)
    for replica in replicas:
        if replica.in_recovery and writer.lsn is not None and replica.lsn is not None:
            replica.lag_bytes = max(0, writer.lsn - replica.lsn)
    for report in (writer, *replicas):
        limit = report.connection_limit
        if limit is not None and report.pool_budget > limit:
            report.problems.append(
                f"pool budget {report.pool_budget} connections is over the "
                f"server's limit of {limit} (max_connections minus reserved)"
            )


def _warn_about_poolers(report: EngineReport, url: URL) -> None:
    # The server's own port differs from the one connected to (or it was
    # reached over a socket): something sits in between, most often
    # PgBouncer, whose transaction mode breaks prepared statements.
    expected = url.port or 5432
    if not report.reachable or report.server_port == expected:
        return
    seen = "a Unix socket" if report.server_port is None else report.server_port
    report.warnings.append(
        f"connected to port {expected}, but the server listens on {seen}: a "
        "connection pooler sits in between. If it is PgBouncer in transaction "
        "mode (before 1.21, or without max_prepared_statements), set "
        "pgbouncer=True (ROUTING_DB_PGBOUNCER=true, --pgbouncer) or prepared "
        "statements will fail"
    )


async def check_setup(
    writer_url: str,
    replica_urls: list[str],
    *,
    writer_pool: int,
    replica_pool: int,
    processes: int = 1,
    pgbouncer: bool = False,
) -> list[EngineReport]:
    """Inspect every server; ``*_pool`` is pool_size + max_overflow per process."""
    urls = [make_url(writer_url), *(make_url(u) for u in replica_urls)]
    secrets = [u.password for u in urls if isinstance(u.password, str) and u.password]
    reports = [
        EngineReport(
            name=url_name(url),
            role="writer" if i == 0 else "replica",
            pool_budget=(writer_pool if i == 0 else replica_pool) * processes,
        )
        for i, url in enumerate(urls)
    ]
    # Every engine is made before any connects: a missing driver is one
    # ConfigurationError, not a traceback beside half-open connections.
    engines: list[AsyncEngine] = []
    try:
        for i, url in enumerate(urls):
            field = "writer_url" if i == 0 else f"replica_urls[{i - 1}]"
            engines.append(
                create_engine(url, field=field, pgbouncer=pgbouncer, poolclass=NullPool)
            )
        await asyncio.gather(
            *(
                _inspect(report, engine, secrets)
                for report, engine in zip(reports, engines, strict=True)
            )
        )
        await asyncio.gather(
            *(
                _count_servers(report, engine)
                for report, engine in zip(reports[1:], engines[1:], strict=True)
                if report.reachable
            )
        )
    finally:
        await asyncio.gather(*(engine.dispose() for engine in engines))
    _judge(reports[0], reports[1:])
    if not pgbouncer:
        for report, url in zip(reports, urls, strict=True):
            _warn_about_poolers(report, url)
    return reports
