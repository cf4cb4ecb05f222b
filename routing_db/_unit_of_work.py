"""Run a whole transaction again when it failed in a way that rerunning fixes."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any, Concatenate, ParamSpec, TypeVar

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from ._exceptions import CommitOutcomeUnknown
from ._retry import RetryPolicy, is_transient_error

__all__ = ["run_unit_of_work", "unit_of_work"]

P = ParamSpec("P")
R = TypeVar("R")
S = TypeVar("S", bound=AsyncSession)


def _rerunnable(error: BaseException) -> bool:
    # A lost COMMIT may have committed: running the function again could
    # write twice. Everything else that is transient failed before COMMIT.
    return not isinstance(error, CommitOutcomeUnknown) and is_transient_error(error)


def _policy(factory: async_sessionmaker[Any], retry: RetryPolicy | None) -> RetryPolicy:
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


def unit_of_work(
    factory: async_sessionmaker[S], *, retry: RetryPolicy | None = None
) -> Callable[[Callable[Concatenate[S, P], Awaitable[R]]], Callable[P, Awaitable[R]]]:
    """Decorate ``async def fn(session, ...)``: each call runs as a unit of work."""

    def decorate(
        fn: Callable[Concatenate[S, P], Awaitable[R]],
    ) -> Callable[P, Awaitable[R]]:
        @functools.wraps(fn)
        async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            return await _run(factory, retry, fn, *args, **kwargs)

        return wrapper

    return decorate
