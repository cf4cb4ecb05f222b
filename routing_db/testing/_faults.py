"""The faults every test cluster injects, each with an ``a``-prefixed form."""

from __future__ import annotations

import abc
import asyncio
from collections.abc import Awaitable, Callable
from typing import Concatenate, Generic, ParamSpec, Protocol, Self, TypeVar

__all__ = ["Node", "ReplicatedCluster", "async_form"]

P = ParamSpec("P")
R = TypeVar("R")
C = TypeVar("C")


class Node(Protocol):
    """One server of a test cluster."""

    name: str
    port: int


N = TypeVar("N", bound=Node)


def async_form(
    fn: Callable[Concatenate[C, P], R],
) -> Callable[Concatenate[C, P], Awaitable[R]]:
    """An ``a``-prefixed method that runs ``fn`` in a thread (loop keeps running).

    It calls the instance's own method of that name: a subclass's override.
    """
    name = fn.__name__

    async def wrapper(self: C, /, *args: P.args, **kwargs: P.kwargs) -> R:
        method: Callable[P, R] = getattr(self, name)
        return await asyncio.to_thread(method, *args, **kwargs)

    wrapper.__name__ = wrapper.__qualname__ = f"a{name}"
    wrapper.__doc__ = f"Async form of ``{name}``: the event loop keeps running."
    return wrapper


class ReplicatedCluster(abc.ABC, Generic[N]):
    """A primary and its replicas on this machine (PostgreSQL or MariaDB):
    the faults both can inject, so one test can be written for either."""

    primary: N
    replicas: list[N]

    @abc.abstractmethod
    def stop(self) -> None:
        """Stop every server and remove its files."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        nodes = ", ".join(f"{n.name}:{n.port}" for n in (self.primary, *self.replicas))
        return f"<{type(self).__name__} {nodes}>"

    @abc.abstractmethod
    def hang_replica(self, index: int) -> None:
        """Stop replica ``index`` (SIGSTOP), its sockets open: a hung host."""

    @abc.abstractmethod
    def resume_replica(self, index: int) -> None:
        """Let a hung replica run again (SIGCONT)."""

    @abc.abstractmethod
    def hang_primary(self) -> None:
        """Stop the primary (SIGSTOP), its sockets open: a hung host."""

    @abc.abstractmethod
    def resume_primary(self) -> None:
        """Let a hung primary run again (SIGCONT)."""

    @abc.abstractmethod
    def crash_primary(self) -> None:
        """Crash the primary, as a failover starts."""

    @abc.abstractmethod
    def promote(self, index: int) -> None:
        """Make replica ``index`` the primary; returns once it takes writes."""

    @abc.abstractmethod
    def follow(self, index: int, *, new_primary: int) -> None:
        """Make replica ``index`` replicate from replica ``new_primary``."""

    ahang_replica = async_form(hang_replica)
    aresume_replica = async_form(resume_replica)
    ahang_primary = async_form(hang_primary)
    aresume_primary = async_form(resume_primary)
    acrash_primary = async_form(crash_primary)
    apromote = async_form(promote)
    afollow = async_form(follow)
