"""Which errors are worth another attempt, and the one tenacity policy.

Classification looks at the whole chain (SQLAlchemy wrapper, the dialect's
DBAPI adapter, the driver's own exception) by SQLSTATE where there is one and
by exception type where the failure happened below the protocol (a refused
or reset socket).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

from sqlalchemy import exc as sa_exc
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
    wait_exponential,
    wait_random,
)
from tenacity.wait import wait_base

from ._compat import pause
from ._exceptions import ConfigurationError, ReplicaReadTimeout, RoutingDBError

T = TypeVar("T")

__all__ = [
    "RetryPolicy",
    "error_cause",
    "is_connection_error",
    "is_read_only_rejection",
    "is_recovery_conflict",
    "is_stale_plan",
    "is_transient_error",
    "never_sent",
    "rerun_kind",
]

# 08: connection exception; 57P01/02/03: admin shutdown, crash shutdown,
# cannot connect now (server starting or stopping).
_CONNECTION_STATES = frozenset({"57P01", "57P02", "57P03"})
# Serialization failure (also how a standby cancels a query that conflicts
# with recovery) and deadlock: the transaction can simply be run again.
_RERUN_STATES = frozenset({"40001", "40P01"})
# MySQL client errors: lost connection, server gone away, can't connect;
# server errors: shutdown in progress (1053), connection killed (1927).
_MYSQL_CONNECTION_CODES = frozenset({1053, 1927, 2002, 2003, 2006, 2013, 2055})
_MYSQL_RERUN_CODES = frozenset({1213, 1205})  # deadlock, lock wait timeout


def _chain(error: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    stack: list[BaseException | None] = [error]
    while stack:
        current = stack.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        stack.extend(
            (getattr(current, "orig", None), current.__cause__, current.__context__)
        )


def error_cause(error: BaseException, secrets: Iterable[str | None] = ()) -> str:
    """What went wrong, in the driver's words (its message's first line,
    without SQLAlchemy's wrapping), with ``secrets`` masked."""
    cause = getattr(error, "orig", None) or error
    lines = str(cause).strip().splitlines()
    message = lines[0] if lines else type(cause).__name__
    for secret in secrets:
        if secret:
            message = message.replace(secret, "***")
    return message


def _sqlstate(error: BaseException) -> str | None:
    state = getattr(error, "sqlstate", None) or getattr(error, "pgcode", None)
    return state if isinstance(state, str) else None


def _mysql_code(error: BaseException) -> int | None:
    args = getattr(error, "args", ())
    return args[0] if args and isinstance(args[0], int) else None


def _refused_unsent(error: BaseException) -> bool:
    # asyncpg checks its protocol state before it writes a message, and says
    # "cannot switch to state ..." (or "not connected") when the connection
    # cannot take one: after the server's FATAL on an idle connection, while
    # the end of the stream is still on its way. Nothing was sent.
    if type(error).__name__ != "InternalClientError":
        return False
    message = str(error)
    return message.startswith("cannot switch to state") or message == "not connected"


def _driver_connection_lost(error: BaseException) -> bool:
    # Names, not imports: each driver is optional. These are raised when the
    # client finds the socket gone, before or instead of a SQLSTATE.
    name = type(error).__name__
    if name == "ConnectionDoesNotExistError" or _refused_unsent(error):  # asyncpg
        return True
    if (
        type(error).__module__.startswith("psycopg")
        and any(cls.__name__ == "OperationalError" for cls in type(error).__mro__)
        and getattr(error, "sqlstate", None) is None
    ):
        # psycopg 3 gives every server error a SQLSTATE; an OperationalError
        # (or a subclass: ConnectionTimeout) without one comes from libpq
        # itself: connect failed or timed out, socket closed.
        return True
    message = str(error).lower()
    return name.endswith(("InterfaceError", "OperationalError")) and (
        "connection" in message and "closed" in message
    )


def is_connection_error(error: BaseException) -> bool:
    """True when ``error`` means the connection to the server failed or was lost."""
    for item in _chain(error):
        if isinstance(item, ReplicaReadTimeout):
            return True  # its connection was cut and discarded
        if isinstance(item, RoutingDBError):
            # NoReplicaAvailable is a ConnectionError too, but retrying it
            # would only find the same empty set of replicas.
            return False
        if isinstance(item, sa_exc.DBAPIError) and item.connection_invalidated:
            return True
        state = _sqlstate(item)
        if state is not None and (state[:2] == "08" or state in _CONNECTION_STATES):
            return True
        if _mysql_code(item) in _MYSQL_CONNECTION_CODES:
            return True
        if isinstance(item, OSError) or _driver_connection_lost(item):
            return True
    return False


def never_sent(error: BaseException) -> bool:
    """True when the driver refused the statement before sending anything."""
    return any(_refused_unsent(item) for item in _chain(error))


def _refused_as_read_only(error: BaseException) -> bool:
    if _sqlstate(error) == "25006":  # asyncpg, psycopg
        return True
    code = getattr(error, "sqlite_errorcode", None)
    if code is not None:
        return int(code) & 0xFF == 8  # SQLITE_READONLY and its extended codes
    # MySQL: 1792 read-only transaction, 1290 server running with --read-only.
    return _mysql_code(error) in (1792, 1290)


def is_read_only_rejection(error: BaseException) -> bool:
    """True when a server refused a write because the transaction is read-only."""
    return any(_refused_as_read_only(item) for item in _chain(error))


def is_recovery_conflict(error: BaseException) -> bool:
    """True for a query a standby cancelled because it conflicted with replay."""
    return any(
        _sqlstate(item) == "40001" and "conflict with recovery" in str(item)
        for item in _chain(error)
    )


# What a server or asyncpg says when DDL replayed from the primary changed a
# statement it had prepared (ALTER ... TYPE: the result type changed), or
# a type it had cached; the failed statement is dropped from the caches.
_STALE_PLAN_MESSAGES = (
    "cached plan must not change result type",
    "cache lookup failed for type",
)
_STALE_PLAN_TYPES = frozenset(
    {"InvalidCachedStatementError", "OutdatedSchemaCacheError"}
)


def is_stale_plan(error: BaseException) -> bool:
    """True for a prepared statement that DDL made stale (it runs if sent again)."""
    return any(
        type(item).__name__ in _STALE_PLAN_TYPES
        or (
            _sqlstate(item) in ("0A000", "XX000")
            and any(message in str(item) for message in _STALE_PLAN_MESSAGES)
        )
        for item in _chain(error)
    )


def rerun_kind(error: BaseException) -> str:
    """The ``kind`` label of a first statement run again after ``error``."""
    if is_recovery_conflict(error):
        return "recovery_conflict"
    if is_stale_plan(error):
        return "stale_plan"
    if isinstance(error, ReplicaReadTimeout):
        return "replica_read_timeout"
    return "first_statement"


def is_transient_error(error: BaseException) -> bool:
    """True when rerunning the whole transaction may succeed."""
    if is_connection_error(error) or is_stale_plan(error):
        return True
    for item in _chain(error):
        if isinstance(item, RoutingDBError):
            return False
        if _sqlstate(item) in _RERUN_STATES or _mysql_code(item) in _MYSQL_RERUN_CODES:
            return True
    return False


@dataclasses.dataclass(frozen=True, kw_only=True)
class RetryPolicy:
    """How often and how fast to retry; one object, injected where retries happen."""

    attempts: int = 3
    max_seconds: float = 10.0
    wait: wait_base = dataclasses.field(
        default_factory=lambda: (
            wait_exponential(multiplier=0.05, max=1.0) + wait_random(0, 0.05)
        )
    )

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ConfigurationError("RetryPolicy.attempts must be at least 1")

    def _kwargs(self, retry_if: Callable[[BaseException], bool]) -> dict[str, Any]:
        return {
            "stop": stop_after_attempt(self.attempts)
            | stop_after_delay(self.max_seconds),
            "wait": self.wait,
            "retry": retry_if_exception(retry_if),
            "reraise": True,
        }

    def call(
        self, fn: Callable[[], T], *, retry_if: Callable[[BaseException], bool]
    ) -> T:
        """Call ``fn``; retry it as this policy says (in SQLAlchemy's sync layer)."""
        try:
            return fn()  # the common case stays free of tenacity's bookkeeping
        except Exception as exc:
            if self.attempts == 1 or not retry_if(exc):
                raise
        return self.again(retry_if)(fn)

    def again(
        self,
        retry_if: Callable[[BaseException], bool],
        *,
        extra_attempts: int = 0,
        no_wait_if: Callable[[BaseException], bool] | None = None,
    ) -> Retrying:
        """A ``Retrying`` for the attempts left once a first one has failed.

        ``no_wait_if`` marks failures after which the next attempt goes
        elsewhere at once (another replica): no backoff for those.
        """
        kwargs = self._kwargs(retry_if)
        kwargs["stop"] = stop_after_attempt(
            max(self.attempts - 1, 1) + extra_attempts
        ) | stop_after_delay(self.max_seconds)
        if no_wait_if is not None:
            policy_wait = self.wait

            def wait(state: RetryCallState) -> float:
                outcome = state.outcome
                error = outcome.exception() if outcome is not None else None
                if error is not None and no_wait_if(error):
                    return 0.0
                return float(policy_wait(state))

            kwargs["wait"] = wait
        return Retrying(sleep=pause, **kwargs)

    def sync(self, retry_if: Callable[[BaseException], bool]) -> Retrying:
        """A ``Retrying`` for SQLAlchemy's sync layer (under asyncio or in a thread)."""
        return Retrying(sleep=pause, **self._kwargs(retry_if))

    def asynchronous(self, retry_if: Callable[[BaseException], bool]) -> AsyncRetrying:
        """An ``AsyncRetrying`` for coroutines."""
        return AsyncRetrying(**self._kwargs(retry_if))
