"""What a router left running after it was left: threads and asyncio tasks."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import text

from routing_db import (
    Router,
    SyncRouter,
    read_only,
    routing_sessionmaker,
    routing_sync_sessionmaker,
)

__all__ = [
    "WHERE",
    "async_routers_leave_nothing",
    "left_over",
    "sync_routers_leave_nothing",
    "tasks",
    "tasks_left_over",
    "threads",
]

WHERE = text("SELECT inet_server_port()")


def threads() -> set[threading.Thread]:
    """The threads alive now."""
    return {thread for thread in threading.enumerate() if thread.is_alive()}


def left_over(before: set[threading.Thread], deadline: float) -> set[str]:
    """The names of threads started since ``before`` still alive at ``deadline``."""
    # Polled up to the deadline: a thread told to stop ends on its next look.
    while True:
        left = {thread.name for thread in threads() - before}
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.02)


def tasks() -> set[asyncio.Task[Any]]:
    """The asyncio tasks of the running loop not done yet."""
    return {task for task in asyncio.all_tasks() if not task.done()}


async def tasks_left_over(
    before: set[asyncio.Task[Any]], deadline: float
) -> set[asyncio.Task[Any]]:
    """The tasks started since ``before`` still running at ``deadline``."""
    left = tasks() - before
    if left:  # given until the deadline to end
        await asyncio.wait(left, timeout=max(0.0, deadline - time.monotonic()))
        left = tasks() - before
    return left


def sync_routers_leave_nothing(make: Callable[[], SyncRouter]) -> None:
    """Three routers of ``make``, each used (a read, a write) and left: after
    each, every thread it started has ended within a second."""
    before = threads()
    for _ in range(3):  # every `with router:` of a test suite
        router = make()
        Session = routing_sync_sessionmaker(router)
        with router:
            router.poll()
            with Session() as session, read_only:
                session.execute(WHERE).one()
            with Session() as session:
                session.execute(WHERE).one()
            # The monitor, and the read-timeout sweeper of the sync drivers.
            assert threads() - before
        left = left_over(before, time.monotonic() + 1.0)
        assert not left, f"threads still running after the router was left: {left}"


async def async_routers_leave_nothing(make: Callable[[], Router]) -> None:
    """``sync_routers_leave_nothing`` for ``Router``: tasks and threads."""
    threads_before, tasks_before = threads(), tasks()
    for _ in range(3):
        router = make()
        Session = routing_sessionmaker(router)
        async with router:
            await router.poll()
            async with Session() as session:
                with read_only:
                    await session.execute(WHERE)
            assert tasks() - tasks_before  # the monitor runs
        deadline = time.monotonic() + 1.0
        left = await tasks_left_over(tasks_before, deadline)
        assert not left, f"tasks still running after the router was left: {left}"
        assert not left_over(threads_before, deadline)
