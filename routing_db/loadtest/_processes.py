"""One load run spread over several processes: an event loop uses one core."""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import queue
from collections.abc import Callable
from typing import Any

from sqlalchemy.ext.asyncio import async_sessionmaker

from .._exceptions import ConfigurationError, RoutingDBError
from ._profiles import Workload
from ._runner import Samples, check_stop, measure, merge, summarize
from ._summary import LoadSummary

__all__ = ["LoadProcessError", "SessionFactoryMaker", "run_load_in_processes"]


class LoadProcessError(RoutingDBError, RuntimeError):
    """A process of a multi-process load run failed; the message says how."""


SessionFactoryMaker = Callable[
    [], contextlib.AbstractAsyncContextManager[async_sessionmaker[Any]]
]
"""Opens the session factory (and its engines) in a process, closes them after."""

_START_TIMEOUT = 120.0  # seconds for every process to import and connect


def _shares(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def _child(
    make: SessionFactoryMaker,
    options: dict[str, Any],
    barrier: Any,
    results: Any,
    done: Any,
    clock: Any,
    index: int,
) -> None:
    def progress(count: int, elapsed: float) -> None:
        done[index] = count
        clock[index] = elapsed

    async def run() -> Samples:
        async with make() as factory:
            # Every process starts measuring at once, once all could import.
            await asyncio.to_thread(barrier.wait, _START_TIMEOUT)
            return await measure(factory, progress=progress, **options)

    try:
        results.put((index, asyncio.run(run()), None))
    except BaseException as exc:  # reported to the parent, which raises it
        barrier.abort()
        results.put((index, None, f"{type(exc).__name__}: {exc}"))


async def run_load_in_processes(
    make: SessionFactoryMaker,
    *,
    processes: int,
    profile: str = "point_read",
    concurrency: int = 10,
    duration: float | None = None,
    operations: int | None = None,
    workload: Workload | None = None,
    progress: Callable[[int, float], None] | None = None,
) -> LoadSummary:
    """``run_load`` in ``processes`` processes side by side, summarised as one.

    ``make`` runs in each process (so it must pickle: a module-level function
    or a ``functools.partial`` of one) and opens that process's own engines;
    ``concurrency`` and ``operations`` are totals, shared out.
    """
    if processes < 1:
        raise ConfigurationError("processes must be at least 1")
    if concurrency < processes:
        raise ConfigurationError("concurrency must be at least the process count")
    check_stop(duration, operations)
    context = multiprocessing.get_context("spawn")  # no forked event loops
    barrier = context.Barrier(processes)
    results = context.Queue()
    # Each process's operations so far and seconds measuring, for progress.
    done = context.Array("q", processes)
    clock = context.Array("d", processes)
    counts = _shares(operations, processes) if operations is not None else None
    children = [
        context.Process(
            target=_child,
            args=(
                make,
                {
                    "profile": profile,
                    "concurrency": share,
                    "duration": duration,
                    "operations": None if counts is None else counts[i],
                    "workload": workload,
                },
                barrier,
                results,
                done,
                clock,
                i,
            ),
            daemon=True,
        )
        for i, share in enumerate(_shares(concurrency, processes))
    ]
    for child in children:
        child.start()
    parts: dict[int, Samples] = {}
    failures: list[str] = []
    try:
        while len(parts) + len(failures) < processes:
            try:
                index, samples, error = await asyncio.to_thread(results.get, True, 0.5)
            except queue.Empty:
                elapsed = max(clock[:])
                if progress is not None and elapsed > 0:  # measuring has begun
                    progress(sum(done[:]), elapsed)
                if all(not child.is_alive() for child in children):
                    failures.append("a load process ended without a result")
                continue
            if error is not None:
                failures.append(f"load process {index}: {error}")
            else:
                parts[index] = samples
    finally:
        for child in children:
            child.join(timeout=10)
            if child.is_alive():
                child.kill()
    if failures:
        raise LoadProcessError("; ".join(failures))
    return summarize(merge([parts[i] for i in sorted(parts)]))
