"""What a router left running after it was left: threads and asyncio tasks."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

__all__ = ["left_over", "tasks", "tasks_left_over", "threads"]


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
