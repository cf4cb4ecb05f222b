"""The hooks a router puts on its engines: a replica's connections set up and
checked, the writer's lost COMMIT, the idle check at checkout."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy.exc import DisconnectionError

from .._backends.backend import CLUSTERS, SERVER
from .._backends.connections import driver_of, driver_says_closed
from .._backends.registry import backend_for
from .._compat import on_connect_isolation_level
from .._decide.classify import Kind, classify_sql
from .._decide.context import COMMITTING
from .._exceptions import (
    CommitOutcomeUnknown,
    ConfigurationError,
    NoWriterAvailable,
    ReadOnlyViolation,
)
from .._retry import is_connection_error, is_read_only_rejection, never_sent
from .hooks import Hooks
from .make import AppEngine, core

__all__ = [
    "NotAStandby",
    "WriterIsAStandby",
    "install_commit_recorder",
    "install_idle_ping",
    "install_replica_setup",
    "install_writer_hooks",
]


def _close_quietly(dbapi_connection: Any) -> None:
    with contextlib.suppress(Exception):  # it is being discarded either way
        dbapi_connection.close()


def _translate_read_only(context: Any) -> BaseException | None:
    if is_read_only_rejection(context.original_exception):
        return ReadOnlyViolation(
            "a read-only transaction refused a write (a replica's, or the "
            "writer's as a reader); nothing was written. Send writes to the "
            "writer: outside read_only, in use_writer, or with "
            "routing_db_role='writer' on the statement."
        )
    return None


class NotAStandby(ConfigurationError):
    """A replica's new connection found a server that is not a standby."""

    # What the ejection log and the start-up check say of it.
    cause = "it is not a standby (it takes writes)"

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
    seen: Callable[[bool, frozenset[str] | None], bool],
) -> None:
    """Make every new connection of ``engine`` read-only and check it is a standby.

    The connection's record learns which server it reached and that
    server's clusters (see ``positions.SERVER``). ``seen(standby,
    clusters)`` records what a new connection found and says whether a
    standby was reached through ``engine`` before.
    """
    dialect = engine.dialect.name
    backend = backend_for(dialect)
    if backend is None:
        raise ConfigurationError(f"replica {name}: unsupported dialect '{dialect}'")

    def on_connect(dbapi_connection: Any, connection_record: Any) -> None:
        try:
            cursor = dbapi_connection.cursor()
            try:
                found = backend.setup_replica(cursor)
            finally:
                cursor.close()
            # Commit: a session-level SET made inside a transaction that is
            # later rolled back (the pool's reset-on-return) would be undone.
            dbapi_connection.commit()
        except BaseException:
            _close_quietly(dbapi_connection)
            raise
        connection_record.info[SERVER] = found.server
        connection_record.info[CLUSTERS] = found.clusters
        was_standby = seen(found.standby, found.clusters)
        if require_standby and not found.standby:
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


class WriterIsAStandby(NoWriterAvailable):
    """A new writer connection reached a standby: the writer URL does not
    point at the primary (a proxy or DNS name still moving after a failover,
    a load balancer that has not checked its servers yet)."""


def _refuse_standbys(
    engine: AppEngine, hooks: Hooks, name: str, lost: Callable[[], None]
) -> None:
    # Checked once per new connection: a read served by the writer (read-
    # your-writes) on a standby behind the writer's URL would be stale, and
    # a write there refused.
    backend = backend_for(engine.dialect.name)
    sql = None if backend is None else backend.standby_sql
    if backend is None or sql is None:
        return

    def on_connect(dbapi_connection: Any, connection_record: Any) -> None:
        try:
            driver = driver_of(dbapi_connection)
            row = backend.one_row(driver, dbapi_connection, sql)
            standby = bool(row and row[0])
        except BaseException:
            _close_quietly(dbapi_connection)
            raise
        if standby:
            _close_quietly(dbapi_connection)
            lost()
            raise WriterIsAStandby(
                f"no writer: a new connection of {name} reached a standby (its "
                "URL does not point at the primary now)"
            )

    hooks.listen(core(engine), "connect", on_connect)


_RECORDERS = "routing_db_commit_recorders"
# Where SQLAlchemy sends every statement; the execution context comes last.
_EXECUTES = ("do_execute", "do_executemany", "do_execute_no_params")


def install_commit_recorder(
    engine: AppEngine, hooks: Hooks, committed: Callable[[Any], None]
) -> None:
    """Tell ``committed`` of every COMMIT on ``engine`` that no routing
    session made (a plain ``Session``, ``engine.begin()``), with its pooled
    connection, right after it: a routing session records its own commits,
    and only those that wrote. In AUTOCOMMIT isolation each statement that
    is not a read commits on its own: it is told of right after it."""
    dialect = core(engine).dialect
    recorders: list[Callable[[Any], None]] | None = vars(dialect).get(_RECORDERS)
    if recorders is None:
        # One wrapper per dialect (an engine and its execution_options()
        # copies), however many routers share the engine.
        recorders = []
        commit = dialect.do_commit

        def do_commit(dbapi_connection: Any) -> None:
            # SQLAlchemy passes the pooled connection. The dialect, not
            # Connection's commit event: that event fires before the COMMIT,
            # and any Connection listener puts every statement on the engine
            # on SQLAlchemy's slower event-dispatching path.
            commit(dbapi_connection)
            if not COMMITTING.get():
                for recorder in tuple(recorders):
                    recorder(dbapi_connection)

        dialect.do_commit = do_commit  # type: ignore[method-assign]
        # The level of a connection that sets none of its own.
        level = on_connect_isolation_level(dialect)
        for name in _EXECUTES:
            execute = getattr(dialect, name)
            setattr(dialect, name, _autocommit_recorded(execute, recorders, level))
        setattr(dialect, _RECORDERS, recorders)
    recorders.append(committed)

    def remove() -> None:
        assert recorders is not None
        recorders.remove(committed)
        if not recorders:
            for name in ("do_commit", *_EXECUTES):
                delattr(dialect, name)
            delattr(dialect, _RECORDERS)

    hooks.on_remove(remove)


def _autocommit_recorded(
    execute: Callable[..., None],
    recorders: list[Callable[[Any], None]],
    default_level: str | None,
) -> Callable[..., None]:
    def recorded(cursor: Any, statement: str, *rest: Any) -> None:
        execute(cursor, statement, *rest)
        # No COMMIT follows a statement in AUTOCOMMIT for do_commit to see:
        # a write that commits on its own is recorded here, as it lands. (A
        # connection's own isolation level is in every statement's options.)
        options = getattr(rest[-1], "execution_options", None) if rest else None
        if (
            options is not None
            and options.get("isolation_level", default_level) == "AUTOCOMMIT"
            and not COMMITTING.get()
            and classify_sql(statement) is not Kind.READ
        ):
            for recorder in tuple(recorders):
                recorder(rest[-1].root_connection.connection)

    return recorded


def install_writer_hooks(
    engine: AppEngine,
    hooks: Hooks,
    *,
    reader: AppEngine | None,
    name: str = "writer",
    lost: Callable[[], None] = lambda: None,
) -> None:
    """Make a COMMIT that loses the writer's connection a ``CommitOutcomeUnknown``,
    and refuse a new connection that reached a standby (``lost()`` is told).

    ``reader``: the writer's engine for a share of replica reads (READ ONLY
    transactions), where a refused write is a ``ReadOnlyViolation``. On the
    writer itself such a refusal is left to the session: it may mean that
    the server is not the primary any more.
    """
    sync = core(engine)
    reads = None if reader is None else core(reader)
    for target in (engine, *([] if reader is None else [reader])):
        _refuse_standbys(target, hooks, name, lost)

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
