"""Connecting to a host that does not answer: bounded, and left to the monitor.

A connection attempt to a host that accepts and never answers, or never
accepts, would otherwise wait for the driver's own default (asyncpg: 60 s)
or the kernel's TCP timeout. The monitor's checks are bounded here too;
the application's replica statements: ``read_timeout``.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncEngine

from .._backends.connections import cut
from .._backends.registry import backend_for
from .._compat import wrap_creator
from .._engines.hooks import Hooks
from .._engines.make import AppEngine, core
from .._exceptions import RoutingDBError

__all__ = [
    "MONITOR_PROBING",
    "ReplicaEjected",
    "checked_within",
    "install_connect_guard",
    "install_connect_timeout",
    "submit_check",
]

T = TypeVar("T")

# Set during a monitor round (router.poll() too): its connections to an
# ejected replica are the probes that bring it back.
MONITOR_PROBING: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "routing_db_monitor_probing", default=False
)


_RECHECK = 0.05  # seconds between looks at a replica a read is connecting to


class ReplicaEjected(RoutingDBError, ConnectionError):
    """A read was about to open a connection to an ejected replica (the read
    runs elsewhere; a ``RoutingDBError`` should it ever reach the caller)."""


def install_connect_guard(
    engine: AppEngine, hooks: Hooks, may_connect: Callable[[], bool]
) -> None:
    """No new connection to ``engine`` (a replica) while it is ejected, but
    the monitor's probes: a read waiting in its pool when it was ejected
    would otherwise pay connect_timeout on a host that hangs."""

    where = f"{engine.url.host}:{engine.url.port}"

    def abandoned_if_ejected(connect: Callable[..., Any]) -> Callable[..., Any]:
        # A read already connecting when the host hung gives up as soon as
        # the replica is ejected (by another read's timeout, or the
        # monitor), not at connect_timeout.
        async def connecting(*args: Any, **kwargs: Any) -> Any:
            if MONITOR_PROBING.get():
                return await connect(*args, **kwargs)
            attempt = asyncio.ensure_future(connect(*args, **kwargs))
            try:
                while True:
                    done, _ = await asyncio.wait({attempt}, timeout=_RECHECK)
                    if done:
                        return attempt.result()
                    if not may_connect():
                        raise ReplicaEjected(f"{where} was ejected during a connect")
            finally:
                attempt.cancel()

        return connecting

    backend = backend_for(engine.dialect.name)
    creator = None if backend is None else backend.creators.get(engine.dialect.driver)

    def guard(dialect: Any, record: Any, cargs: Any, cparams: Any) -> None:
        if not (may_connect() or MONITOR_PROBING.get()):
            raise ReplicaEjected(f"{where} is ejected")
        if creator is not None and engine.dialect.is_async:
            # Not SQLite; a sync face's connect is bounded by connect_timeout.
            wrap_creator(cparams, creator, abandoned_if_ejected, "guard")

    hooks.listen(core(engine), "do_connect", guard)


def install_connect_timeout(engine: AppEngine, hooks: Hooks, seconds: float) -> None:
    """Bound each new connection of ``engine`` to ``seconds``, unless its
    ``connect_args`` (or URL) set the driver's own timeout already."""
    backend = backend_for(engine.dialect.name)
    driver = engine.dialect.driver
    bound = {} if backend is None else backend.connect_timeout_args(driver, seconds)
    if backend is None or not bound:
        return  # SQLite: no network
    creator = backend.creators.get(driver)
    greeting = engine.dialect.is_async and backend.greeting_unbounded(driver)

    def within(connect: Callable[..., Any]) -> Callable[..., Any]:
        async def bounded(*args: Any, **kwargs: Any) -> Any:
            return await asyncio.wait_for(connect(*args, **kwargs), seconds)

        return bounded

    def bounded(dialect: Any, record: Any, cargs: Any, cparams: dict[str, Any]) -> None:
        for key, value in bound.items():
            cparams.setdefault(key, value)
        if greeting and creator is not None:
            # Its connect_timeout leaves the server's greeting unbounded: a
            # host that accepts and never sends it would hold the connect for
            # ever. (Around any creator: replica_read_timeout's.)
            wrap_creator(cparams, creator, within, "connect_timeout")

    hooks.listen(core(engine), "do_connect", bounded)


async def checked_within(
    engine: AsyncEngine, check: Callable[..., T], *args: Any, seconds: float
) -> T:
    """``check(connection, *args)`` on a connection of ``engine``; after
    ``seconds``, ``TimeoutError`` and the check is abandoned.

    Abandoned, not awaited: a driver cancelled in a statement may first ask a
    host that hangs to cancel it (psycopg waits 10 s for that), and the
    monitor must not wait with it. The statement's socket is cut instead, so
    it fails at once; one still connecting is cancelled.
    """
    driver: list[Any] = []

    async def run() -> T:
        async with engine.connect() as connection:
            driver.append((await connection.get_raw_connection()).driver_connection)
            return await connection.run_sync(check, *args)

    task = asyncio.ensure_future(run())
    try:
        done, _ = await asyncio.wait({task}, timeout=seconds)
    except asyncio.CancelledError:
        task.cancel()
        raise
    if task in done:
        return task.result()
    task.add_done_callback(_forget)
    if not (driver and cut(driver[0])):
        task.cancel()
    raise TimeoutError(f"no answer within {seconds:g} s")


def _forget(task: asyncio.Task[Any]) -> None:
    if not task.cancelled():
        task.exception()  # retrieved: its failure is the timeout's


def submit_check(
    workers: ThreadPoolExecutor, engine: Engine, check: Callable[..., T], *args: Any
) -> tuple[Future[T], Callable[[], None]]:
    """``check(connection, *args)`` on a connection of ``engine``, on a worker
    thread (the sync face's monitor and discovery): its future, and a function
    that cuts its connection when the caller gives up on it, so the worker
    does not wait on a host that hangs (libpq would, for ever)."""
    driver: list[Any] = []

    def run() -> T:
        # A thread of its own: the context (MONITOR_PROBING) is set there.
        probing = MONITOR_PROBING.set(True)
        try:
            with engine.connect() as connection:
                driver.append(connection.connection.driver_connection)
                return check(connection, *args)
        finally:
            MONITOR_PROBING.reset(probing)

    def give_up() -> None:
        if driver:
            cut(driver[0])

    return workers.submit(run), give_up
