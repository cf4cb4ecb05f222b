"""Engines: URL checks, engine creation, and how a replica connection is set up."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any, Literal, overload

import sqlalchemy
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.exc import ArgumentError, DisconnectionError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from ._connections import driver_of, driver_says_closed
from ._context import COMMITTING
from ._exceptions import CommitOutcomeUnknown, ConfigurationError, ReadOnlyViolation
from ._hooks import Hooks
from ._retry import is_connection_error, is_read_only_rejection, never_sent
from ._sa_compat import max_overflow

__all__ = [
    "AppEngine",
    "NotAStandby",
    "ReplicaRestarted",
    "behind_pgbouncer",
    "check_url",
    "core",
    "create_engine",
    "dispose",
    "engine_name",
    "install_idle_ping",
    "install_replica_setup",
    "install_writer_hooks",
    "pool_capacity",
    "safe_url",
    "url_name",
]

# backend -> (async drivers we accept, the one to suggest instead of a sync one)
_ASYNC_DRIVERS: Mapping[str, tuple[frozenset[str], str]] = {
    "postgresql": (frozenset({"asyncpg", "psycopg", "psycopg_async"}), "asyncpg"),
    "mysql": (frozenset({"aiomysql", "asyncmy"}), "aiomysql"),
    "mariadb": (frozenset({"aiomysql", "asyncmy"}), "aiomysql"),
    "sqlite": (frozenset({"aiosqlite"}), "aiosqlite"),
}
# The same for SyncRouter's engines (create_engine).
_SYNC_DRIVERS: Mapping[str, tuple[frozenset[str], str]] = {
    "postgresql": (frozenset({"psycopg2", "psycopg"}), "psycopg"),
    "mysql": (frozenset({"pymysql", "mysqldb"}), "pymysql"),
    "mariadb": (frozenset({"pymysql", "mysqldb"}), "pymysql"),
    "sqlite": (frozenset({"pysqlite"}), "pysqlite"),
}
_DRIVER_PACKAGES = {"psycopg_async": "psycopg", "psycopg": "psycopg[binary]"}

_URL_FORM = "dialect+driver://user:password@host:port/database"


AppEngine = AsyncEngine | Engine


def core(engine: AppEngine) -> Engine:
    """The ``Engine`` routing works with: an ``AsyncEngine``'s ``sync_engine``."""
    return engine.sync_engine if isinstance(engine, AsyncEngine) else engine


async def dispose(engine: AppEngine) -> None:
    """Close ``engine``'s pooled connections, as its face does it."""
    if isinstance(engine, AsyncEngine):
        await engine.dispose()
    else:
        engine.dispose()


def safe_url(url: URL) -> str:
    """Render ``url`` with its password masked."""
    return url.render_as_string(hide_password=True)


def check_url(value: str | URL, *, field: str, sync: bool = False) -> URL:
    """Parse ``value`` and require an asyncio driver (``sync``: a synchronous
    one, for ``SyncRouter``); errors never show a password."""
    try:
        url = make_url(value)
    except (ArgumentError, ValueError, TypeError):
        # ``from None``: SQLAlchemy's message repeats the whole URL string.
        raise ConfigurationError(
            f"{field} is not a valid database URL; expected {_URL_FORM}"
        ) from None
    drivers = _SYNC_DRIVERS if sync else _ASYNC_DRIVERS
    backend = url.get_backend_name()
    if backend not in drivers:
        raise ConfigurationError(
            f"{field} uses the unsupported database '{backend}'; supported: "
            + ", ".join(sorted(drivers))
        )
    accepted, suggested = drivers[backend]
    try:
        driver = url.get_driver_name()
    except Exception:
        raise ConfigurationError(
            f"{field} names an unknown driver '{url.drivername}'; "
            f"use {backend}+{suggested}"
        ) from None
    if driver not in accepted and sync:
        raise ConfigurationError(
            f"{field} uses '{url.drivername}', which resolves to the driver "
            f"'{driver}'; SyncRouter needs a synchronous driver: use "
            f"{backend}+{suggested}:// (accepted: "
            + ", ".join(f"{backend}+{d}" for d in sorted(accepted))
            + "); Router takes the asyncio drivers"
        )
    if driver not in accepted:
        raise ConfigurationError(
            f"{field} uses '{url.drivername}', which resolves to the synchronous "
            f"driver '{driver}'; routing_db needs an asyncio driver: "
            f"use {backend}+{suggested}:// (accepted: "
            + ", ".join(f"{backend}+{d}" for d in sorted(accepted))
            + ")"
        )
    return url


@overload
def create_engine(
    url: URL,
    *,
    field: str,
    pgbouncer: bool = ...,
    sync: Literal[False] = ...,
    **kwargs: Any,
) -> AsyncEngine: ...


@overload
def create_engine(
    url: URL, *, field: str, pgbouncer: bool = ..., sync: Literal[True], **kwargs: Any
) -> Engine: ...


@overload
def create_engine(
    url: URL, *, field: str, pgbouncer: bool = ..., sync: bool, **kwargs: Any
) -> AppEngine: ...


def create_engine(
    url: URL, *, field: str, pgbouncer: bool = False, sync: bool = False, **kwargs: Any
) -> AppEngine:
    """``create_async_engine`` (``sync``: ``create_engine``) with errors that
    name the setting, not the password.

    ``pgbouncer``: adjusted for PgBouncer's transaction pooling first.
    """
    if pgbouncer:
        url, kwargs = behind_pgbouncer(url, kwargs)
    try:
        if sync:
            return sqlalchemy.create_engine(url, **kwargs)
        return create_async_engine(url, **kwargs)
    except ModuleNotFoundError as exc:
        driver = url.get_driver_name()
        package = _DRIVER_PACKAGES.get(driver, driver)
        raise ConfigurationError(
            f"{field} needs the driver '{driver}', which is not installed "
            f"(pip install {package}): {exc.name} is missing"
        ) from None
    except (ArgumentError, TypeError) as exc:
        raise ConfigurationError(f"{field}: {exc}") from None


def _unique_statement_name() -> str:
    return f"__asyncpg_{uuid.uuid4()}__"


def behind_pgbouncer(url: URL, kwargs: dict[str, Any]) -> tuple[URL, dict[str, Any]]:
    """``url`` and engine ``kwargs`` for a PgBouncer in transaction pooling mode.

    Each transaction may get another server connection, so no prepared
    statement may outlive the transaction that made it: asyncpg gets no
    statement cache (neither its own nor SQLAlchemy's) and a unique name for
    each statement; psycopg never prepares. (PgBouncer >= 1.21 with
    ``max_prepared_statements`` makes this unnecessary.)
    """
    driver = url.get_driver_name()
    connect_args = dict(kwargs.get("connect_args") or {})
    if driver == "asyncpg":
        url = url.update_query_dict({"prepared_statement_cache_size": "0"})
        connect_args.setdefault("statement_cache_size", 0)
        connect_args.setdefault("prepared_statement_name_func", _unique_statement_name)
    elif driver in ("psycopg", "psycopg_async"):
        connect_args.setdefault("prepare_threshold", None)
    elif driver == "psycopg2":
        pass  # it never prepares on the server
    else:
        raise ConfigurationError(
            f"pgbouncer=True is for PostgreSQL URLs (asyncpg or psycopg), "
            f"not {url.drivername}"
        )
    return url, {**kwargs, "connect_args": connect_args}


def pool_capacity(pool: Any) -> int:
    """``pool_size + max_overflow`` of a queue pool; 0 when it has no such limit."""
    size = getattr(pool, "size", None)
    if not callable(size):
        return 0
    return int(size()) + max(max_overflow(pool), 0)


def engine_name(engine: AppEngine) -> str:
    """An engine's label: its ``logging_name`` if given, else ``host:port/db``."""
    # logging_name is SQLAlchemy's own name for an engine (create_engine's
    # argument, also in its log lines), so a name is given where engines are.
    given: str | None = core(engine).logging_name
    return given if given else url_name(engine.url)


def url_name(url: URL) -> str:
    """A label for a URL, ``host:port/database``, never with a password."""
    if url.get_backend_name() == "sqlite":
        return f"sqlite:{url.database or ':memory:'}"
    return f"{url.host or 'localhost'}:{url.port or ''}/{url.database or ''}"


def _close_quietly(dbapi_connection: Any) -> None:
    with contextlib.suppress(Exception):  # it is being discarded either way
        dbapi_connection.close()


# What a replica's new connection finds: is it a standby, and when did its
# server start (None where that is not asked).
_Found = tuple[bool, str | None]


def _postgresql(cursor: Any) -> _Found:
    # One round trip: is it a standby, since when does it run, and make every
    # transaction on this connection read-only (session-level set_config).
    cursor.execute(
        "SELECT pg_is_in_recovery(), pg_postmaster_start_time()::text, "
        "set_config('default_transaction_read_only', 'on', false)"
    )
    row = cursor.fetchone()
    return bool(row[0]), row[1]


def _mysql(cursor: Any) -> _Found:
    cursor.execute("SET SESSION TRANSACTION READ ONLY")
    cursor.execute("SELECT @@global.read_only")
    row = cursor.fetchone()
    return bool(row[0]), None


def _sqlite(cursor: Any) -> _Found:
    cursor.execute("PRAGMA query_only = ON")
    # SQLite has no standbys; a read-only file handle is the replica.
    return True, None


_SETUP = {
    "postgresql": _postgresql,
    "mysql": _mysql,
    "mariadb": _mysql,
    "sqlite": _sqlite,
}


def _translate_read_only(context: Any) -> BaseException | None:
    if is_read_only_rejection(context.original_exception):
        return ReadOnlyViolation(
            "a read-only transaction refused a write (a replica's, or the "
            "writer's as a reader); nothing was written. Send writes to the "
            "writer: outside read_only, in use_writer, or with "
            "routing_db_role='writer' on the statement."
        )
    return None


class ReplicaRestarted(Exception):
    """A replica's new connection found its server restarted since a replay
    position was learned from it: that position may predate a rewind."""


class NotAStandby(ConfigurationError):
    """A replica's new connection found a server that is not a standby."""

    def __init__(self, message: str, *, promoted: bool) -> None:
        super().__init__(message)
        # Seen as a standby before: promoted since, not misconfigured.
        self.promoted = promoted


def install_replica_setup(
    engine: AppEngine,
    hooks: Hooks,
    *,
    name: str,
    require_standby: bool,
    seen: Callable[[bool], bool],
    started: Callable[[str], bool],
) -> None:
    """Make every new connection of ``engine`` read-only and check it is a standby.

    ``seen(standby)`` records what a new connection found and says whether
    the server was seen as a standby before; ``started(when)`` records when
    its server started and says whether it restarted since a replay position
    was learned (then this connection is not used: ``ReplicaRestarted``).
    """
    dialect = engine.dialect.name
    setup = _SETUP.get(dialect)
    if setup is None:
        raise ConfigurationError(f"replica {name}: unsupported dialect '{dialect}'")

    def on_connect(dbapi_connection: Any, connection_record: Any) -> None:
        try:
            cursor = dbapi_connection.cursor()
            try:
                standby, start_time = setup(cursor)
            finally:
                cursor.close()
            # Commit: a session-level SET made inside a transaction that is
            # later rolled back (the pool's reset-on-return) would be undone.
            dbapi_connection.commit()
        except BaseException:
            _close_quietly(dbapi_connection)
            raise
        if start_time is not None and started(start_time):
            _close_quietly(dbapi_connection)
            raise ReplicaRestarted(
                f"replica {name} restarted: its replay position is learned again"
            )
        was_standby = seen(standby)
        if require_standby and not standby:
            _close_quietly(dbapi_connection)
            if was_standby:
                raise NotAStandby(
                    f"replica {name} is not a standby any more (promoted?): it "
                    "no longer serves reads",
                    promoted=True,
                )
            raise NotAStandby(
                f"replica {name} is not a standby (it accepts writes): it looks "
                "like a primary. Point replica URLs at read-only standbys, or pass "
                "require_standby=False if this is deliberate.",
                promoted=False,
            )

    sync = core(engine)
    hooks.listen(sync, "connect", on_connect)
    hooks.listen(sync, "handle_error", lambda context: _translate_read_only(context))
    hooks.listen(sync, "handle_error", lambda context: _unsent_is_a_disconnect(context))


def _unsent_is_a_disconnect(context: Any) -> None:
    # asyncpg refuses every statement on a connection whose server has said
    # goodbye (FATAL) before the end of the stream is seen; SQLAlchemy would
    # not count that as a disconnect and would pool the connection again.
    if never_sent(context.original_exception):
        context.is_disconnect = True


def _translate_lost_commit(context: Any) -> BaseException | None:
    error = context.original_exception
    if never_sent(error):
        return None  # the COMMIT never left: the server rolls it back
    if not (context.is_disconnect or is_connection_error(error)):
        return None
    lost = CommitOutcomeUnknown(None, None, error, connection_invalidated=True)
    lost.args = (
        "the connection to the writer was lost during COMMIT: the transaction "
        "may or may not have been committed. It is not retried; check whether "
        "its changes are there (e.g. by a unique key) before writing again.",
    )
    return lost


def install_writer_hooks(
    engine: AppEngine, hooks: Hooks, *, reader: AppEngine | None
) -> None:
    """Make a COMMIT that loses the writer's connection a ``CommitOutcomeUnknown``.

    ``reader``: the writer's engine for a share of replica reads (READ ONLY
    transactions), where a refused write is a ``ReadOnlyViolation``. On the
    writer itself such a refusal is left to the session: it may mean that
    the server is not the primary any more.
    """
    sync = core(engine)
    reads = None if reader is None else core(reader)

    def lost_commit(context: Any) -> BaseException | None:
        # While a routing session commits, the one failure without a
        # statement is the COMMIT's (flush statements have theirs). The
        # session's commit path marks it: Connection's own commit event
        # would put every statement on the engine on SQLAlchemy's slower
        # event-dispatching path.
        if context.statement is not None or not COMMITTING.get():
            return None
        return _translate_lost_commit(context)

    def refused_on_reader(context: Any) -> BaseException | None:
        if reads is None or context.engine is not reads:
            return None
        return _translate_read_only(context)

    # handle_error is a dialect event: it costs nothing until an error.
    hooks.listen(sync, "handle_error", lost_commit)
    hooks.listen(sync, "handle_error", lambda context: _unsent_is_a_disconnect(context))
    hooks.listen(sync, "handle_error", refused_on_reader)


_CHECKED_IN = "routing_db.checked_in"


def install_idle_ping(engine: AppEngine, hooks: Hooks, *, idle_seconds: float) -> None:
    """Check a pooled connection at checkout only when it may be dead.

    Free when the driver already knows its socket closed (a server restart);
    one ping when the connection sat idle longer than ``idle_seconds`` (a
    firewall or server timeout may have dropped it); nothing otherwise. A
    dead one raises ``DisconnectionError``, on which the pool replaces it and
    checks out again (SQLAlchemy's documented pessimistic pattern).
    """
    sync = core(engine)
    dialect = sync.dialect

    def checked_in(dbapi_connection: Any, record: Any) -> None:
        record.info[_CHECKED_IN] = time.monotonic()

    def checked_out(dbapi_connection: Any, record: Any, proxy: Any) -> None:
        since = record.info.get(_CHECKED_IN)
        if since is None:
            return  # a connection opened just now
        if driver_says_closed(driver_of(dbapi_connection)):
            raise DisconnectionError("the server closed this pooled connection")
        if time.monotonic() - since <= idle_seconds:
            return
        try:
            dialect.do_ping(dbapi_connection)
        except Exception as exc:
            raise DisconnectionError("an idle pooled connection was dead") from exc

    hooks.listen(sync, "checkin", checked_in)
    hooks.listen(sync, "checkout", checked_out)
