"""Routing scope carried in ``contextvars``: ``read_only`` and ``use_writer``.

Knows nothing of SQLAlchemy. A scope is visible to the task that entered it and
to tasks created inside it (they copy the context), never to anything outside.
"""

from __future__ import annotations

import contextlib
import enum
import functools
import inspect
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from contextvars import ContextVar
from typing import Any, ParamSpec, Self, TypeVar, cast, overload

__all__ = [
    "COMMITTING",
    "SCOPE",
    "ContextDecorator",
    "Scope",
    "committing",
    "current_scope",
    "read_only",
    "use_writer",
]

P = ParamSpec("P")
R = TypeVar("R")


class Scope(enum.Enum):
    """The routing scope in force for the current context."""

    NONE = "none"
    READ_ONLY = "read_only"
    WRITER = "writer"


# A frame is ``[scope, token]``: the scope in force and the token that
# installed it, kept in the frame (not on the shared marker object) so that
# concurrent tasks entering the same marker never mix tokens. A list rather
# than a class: entering a scope is on every request's path.
_Frame = list[Any]
_WRITER = Scope.WRITER  # a module name: an enum member read goes through its class
_ROOT: _Frame = [Scope.NONE, None]
SCOPE: ContextVar[_Frame] = ContextVar("routing_db_scope", default=_ROOT)
# True while a routing session commits: a connection lost then with no
# statement in flight was lost during its COMMIT (see _engines.setup).
COMMITTING: ContextVar[bool] = ContextVar("routing_db_committing", default=False)


@contextlib.contextmanager
def committing() -> Iterator[None]:
    """Mark this context as committing, for as long as the block runs."""
    token = COMMITTING.set(True)
    try:
        yield
    finally:
        COMMITTING.reset(token)


"""The current frame; ``SCOPE.get()[0]`` is ``current_scope()`` without a call."""


def current_scope() -> Scope:
    """Return the routing scope of the current context."""
    scope: Scope = SCOPE.get()[0]
    return scope


class ContextDecorator:
    """Base for scopes usable as ``with``, ``async with`` and sync/async decorator.

    Subclasses implement ``_enter``/``_exit``; the state they change must live
    in ``contextvars`` and be reset with its token.
    """

    __slots__ = ()

    def _enter(self) -> None:
        raise NotImplementedError

    def _exit(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> None:
        self._enter()

    def __exit__(self, *exc_info: object) -> None:
        self._exit()

    async def __aenter__(self) -> None:
        self._enter()

    async def __aexit__(self, *exc_info: object) -> None:
        self._exit()

    @overload
    def __call__(self) -> Self: ...
    @overload
    def __call__(
        self, fn: Callable[P, Coroutine[Any, Any, R]]
    ) -> Callable[P, Coroutine[Any, Any, R]]: ...
    @overload
    def __call__(self, fn: Callable[P, R]) -> Callable[P, R]: ...
    def __call__(self, fn: Callable[P, Any] | None = None) -> Any:
        """Decorate a sync or async function; called bare (``read_only()``),
        the scope itself."""
        if fn is None:
            return self
        return self._decorate(fn)

    def _decorate(self, fn: Callable[P, Any]) -> Any:
        if inspect.iscoroutinefunction(fn):
            async_fn = cast(Callable[P, Awaitable[Any]], fn)

            @functools.wraps(fn)
            async def async_wrapper(*args: P.args, **kwargs: P.kwargs) -> Any:
                self._enter()
                try:
                    return await async_fn(*args, **kwargs)
                finally:
                    self._exit()

            return async_wrapper

        @functools.wraps(fn)
        def sync_wrapper(*args: P.args, **kwargs: P.kwargs) -> Any:
            self._enter()
            try:
                return fn(*args, **kwargs)
            finally:
                self._exit()

        return sync_wrapper


class _ScopeMarker(ContextDecorator):
    """Decorator (sync and async) and context manager (``with``/``async with``)."""

    __slots__ = ("_scope",)

    def __init__(self, scope: Scope) -> None:
        self._scope = scope

    def _enter(self) -> None:
        # use_writer wins over read_only at any depth: a read_only nested
        # inside use_writer must not make the writer's statements fail.
        current = SCOPE.get()[0]
        frame: _Frame = [_WRITER if current is _WRITER else self._scope, None]
        frame[1] = SCOPE.set(frame)

    def _exit(self) -> None:
        token = SCOPE.get()[1]
        if token is None:  # pragma: no cover - only reachable by misuse
            raise RuntimeError("routing_db scope exited more often than entered")
        SCOPE.reset(token)

    def __repr__(self) -> str:
        return f"<routing_db scope {self._scope.value}>"


read_only = _ScopeMarker(Scope.READ_ONLY)
"""Reads go to a replica and writes raise ``ReadOnlyViolation`` inside this."""

use_writer = _ScopeMarker(Scope.WRITER)
"""Every statement goes to the writer inside this; wins over ``read_only``."""
