"""Run a whole transaction again when it failed in a way that rerunning fixes.

For either face: ``unit_of_work`` decorates ``async def fn(session, ...)``
with an ``async_sessionmaker``, and ``def fn(session, ...)`` with a
``sessionmaker`` (the sync face; its backoff sleeps the thread).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable
from typing import Any, Concatenate, ParamSpec, TypeVar, overload

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session, sessionmaker

from .._exceptions import CommitOutcomeUnknown, ConfigurationError
from .._retry import RetryPolicy, is_transient_error

__all__ = ["run_unit_of_work", "unit_of_work"]

P = ParamSpec("P")
R = TypeVar("R")
S = TypeVar("S", bound=AsyncSession)
T = TypeVar("T", bound=Session)


def _rerunnable(error: BaseException) -> bool:
    # A lost COMMIT may have committed: running the function again could
    # write twice. Everything else that is transient failed before COMMIT.
    return not isinstance(error, CommitOutcomeUnknown) and is_transient_error(error)


def _policy(factory: Any, retry: RetryPolicy | None) -> RetryPolicy:
    if retry is not None:
        return retry
    router = factory.kw.get("router")
    return getattr(router, "retry", None) or RetryPolicy()


async def run_unit_of_work(
    factory: async_sessionmaker[S],
    fn: Callable[Concatenate[S, P], Awaitable[R]],
    /,
    *args: P.args,
    **kwargs: P.kwargs,
) -> R:
    """Run ``fn(session, ...)`` in one transaction; rerun it on transient errors.

    Transient: connection loss before COMMIT, serialization failure (40001),
    deadlock (40P01), a standby's recovery conflict. The retry policy is the
    router's (``routing_sessionmaker``), else ``RetryPolicy()``.
    """
    return await _run(factory, None, fn, *args, **kwargs)


async def _run(
    factory: async_sessionmaker[S],
    retry: RetryPolicy | None,
    fn: Callable[Concatenate[S, P], Awaitable[R]],
    *args: P.args,
    **kwargs: P.kwargs,
) -> R:
    async for attempt in _policy(factory, retry).asynchronous(_rerunnable):
        with attempt:
            async with factory() as session, session.begin():
                return await fn(session, *args, **kwargs)
    raise AssertionError("unreachable: tenacity reraises")  # pragma: no cover


def _run_sync(
    factory: sessionmaker[Any],
    retry: RetryPolicy | None,
    fn: Callable[..., R],
    *args: Any,
    **kwargs: Any,
) -> R:
    for attempt in _policy(factory, retry).sync(_rerunnable):
        with attempt, factory() as session, session.begin():
            return fn(session, *args, **kwargs)
    raise AssertionError("unreachable: tenacity reraises")  # pragma: no cover


@overload
def unit_of_work(
    factory: async_sessionmaker[S], *, retry: RetryPolicy | None = None
) -> Callable[
    [Callable[Concatenate[S, P], Awaitable[R]]], Callable[P, Awaitable[R]]
]: ...


@overload
def unit_of_work(
    factory: sessionmaker[T], *, retry: RetryPolicy | None = None
) -> Callable[[Callable[Concatenate[T, P], R]], Callable[P, R]]: ...


def unit_of_work(factory: Any, *, retry: RetryPolicy | None = None) -> Any:
    """Decorate ``fn(session, ...)``: each call runs as a unit of work.

    ``async def`` with an ``async_sessionmaker``; a plain ``def`` with a
    ``sessionmaker`` (``routing_sync_sessionmaker``).
    """

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def wrapper(*args: Any, **kwargs: Any) -> Any:
                return await _run(factory, retry, fn, *args, **kwargs)

            return wrapper
        if not isinstance(factory, sessionmaker):
            raise ConfigurationError(
                "unit_of_work on a plain function needs a sessionmaker "
                "(routing_sync_sessionmaker); async def needs an async_sessionmaker"
            )

        @functools.wraps(fn)
        def sync_wrapper(*args: Any, **kwargs: Any) -> Any:
            return _run_sync(factory, retry, fn, *args, **kwargs)

        return sync_wrapper

    return decorate
