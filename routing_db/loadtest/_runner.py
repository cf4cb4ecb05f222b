"""Run a profile with N concurrent workers and measure it at the pools."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections import Counter
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from typing import Any

from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from .._engines.make import engine_name
from .._engines.observe import PoolObserver, observe
from .._exceptions import ConfigurationError
from ._profiles import Profile, Workload, resolve_profile
from ._summary import EngineStats, LoadSummary, distribution

__all__ = [
    "Samples",
    "check_stop",
    "engines_of",
    "measure",
    "merge",
    "run_load",
    "summarize",
]


class _Operation:
    __slots__ = ("engines", "wait")

    def __init__(self) -> None:
        self.wait = 0.0
        self.engines: set[str] = set()


_current: ContextVar[_Operation | None] = ContextVar("routing_db_load_op", default=None)


class _Recorder:
    """Adds each checkout wait to the operation that waited."""

    def waited(self, name: str, seconds: float, timed_out: bool) -> None:
        operation = _current.get()
        if operation is not None:
            operation.wait += seconds
            operation.engines.add(name)

    def held(self, name: str, seconds: float, where: str | None) -> None:
        pass


def engines_of(factory: async_sessionmaker[Any]) -> dict[str, tuple[str, AsyncEngine]]:
    """The engines behind a session factory: name -> (role, engine)."""
    router = factory.kw.get("router")
    if router is not None:
        return {
            name: ("writer" if engine is router.writer else "replica", engine)
            for name, engine in router.topology.engines()
        }
    bind = factory.kw.get("bind")
    if isinstance(bind, AsyncEngine):
        return {engine_name(bind): ("writer", bind)}
    raise ConfigurationError(
        "run_load needs a session factory bound to an AsyncEngine or a Router"
    )


def check_stop(duration: float | None, operations: int | None) -> None:
    """A run ends after a duration or an operation count: exactly one is given."""
    if (duration is None) == (operations is None):
        raise ConfigurationError("give exactly one of duration or operations")


@dataclasses.dataclass
class Samples:
    """What a load run measured, before summarising (mergeable across processes)."""

    profile: str
    concurrency: int
    elapsed: float
    cpu: float
    latencies: list[float]
    waits: list[float]
    served: Counter[str]
    errors: Counter[str]
    timeouts: int
    engines: list[EngineStats]  # their operations are filled in by summarize()
    processes: int = 1


async def run_load(
    factory: async_sessionmaker[Any],
    *,
    profile: str | Profile = "point_read",
    concurrency: int = 10,
    duration: float | None = None,
    operations: int | None = None,
    workload: Workload | None = None,
    progress: Callable[[int, float], None] | None = None,
) -> LoadSummary:
    """Run ``profile`` on ``concurrency`` workers for a duration or an op count."""
    return summarize(
        await measure(
            factory,
            profile=profile,
            concurrency=concurrency,
            duration=duration,
            operations=operations,
            workload=workload,
            progress=progress,
        )
    )


async def measure(
    factory: async_sessionmaker[Any],
    *,
    profile: str | Profile,
    concurrency: int,
    duration: float | None,
    operations: int | None,
    workload: Workload | None,
    progress: Callable[[int, float], None] | None,
) -> Samples:
    """``run_load``'s measurement, returned as raw samples."""
    if concurrency < 1:
        raise ConfigurationError("concurrency must be at least 1")
    check_stop(duration, operations)
    name, op = resolve_profile(profile)
    work = workload or Workload()
    engines = engines_of(factory)
    observers: Mapping[str, PoolObserver] = {
        label: observe(engine, label) for label, (_, engine) in engines.items()
    }
    recorder = _Recorder()
    for observer in observers.values():
        observer.reset_peaks()
        observer.subscribe(recorder)

    latencies: list[float] = []
    waits: list[float] = []
    served: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    timeouts = 0
    remaining = operations
    started = time.monotonic()
    cpu_started = time.process_time()
    deadline = started + duration if duration is not None else None

    async def worker() -> None:
        nonlocal remaining, timeouts
        while True:
            if deadline is not None and time.monotonic() >= deadline:
                return
            if remaining is not None:
                if remaining <= 0:
                    return
                remaining -= 1
            operation = _Operation()
            token = _current.set(operation)
            start = time.perf_counter()
            try:
                await op(factory, work)
            except sa_exc.TimeoutError:
                timeouts += 1
            except Exception as exc:
                errors[type(exc).__name__] += 1
            else:
                latencies.append(time.perf_counter() - start)
            finally:
                _current.reset(token)
            waits.append(operation.wait)
            served.update(operation.engines)

    async def report() -> None:
        while True:
            await asyncio.sleep(0.5)
            assert progress is not None
            progress(len(waits), time.monotonic() - started)

    ticker = asyncio.create_task(report()) if progress is not None else None
    try:
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    finally:
        if ticker is not None:
            ticker.cancel()
        for observer in observers.values():
            observer.unsubscribe(recorder)
    return Samples(
        profile=name,
        concurrency=concurrency,
        elapsed=time.monotonic() - started,
        cpu=time.process_time() - cpu_started,
        latencies=latencies,
        waits=waits,
        served=served,
        errors=errors,
        timeouts=timeouts,
        engines=[
            EngineStats(
                name=label,
                role=role,
                operations=0,
                checkouts=observers[label].checkouts,
                peak_checked_out=observers[label].peak_checked_out,
                overflow_used=max(observers[label].peak_overflow, 0),
                timeouts=observers[label].timeouts,
            )
            for label, (role, _) in engines.items()
        ],
    )


def merge(parts: list[Samples]) -> Samples:
    """One set of samples from runs side by side (peaks add up: one pool each)."""
    engines: dict[str, EngineStats] = {}
    for part in parts:
        for stats in part.engines:
            seen = engines.get(stats.name)
            engines[stats.name] = (
                stats
                if seen is None
                else seen.model_copy(
                    update={
                        field: getattr(seen, field) + getattr(stats, field)
                        for field in (
                            "checkouts",
                            "peak_checked_out",
                            "overflow_used",
                            "timeouts",
                        )
                    }
                )
            )
    return Samples(
        profile=parts[0].profile,
        concurrency=sum(part.concurrency for part in parts),
        elapsed=max(part.elapsed for part in parts),
        cpu=sum(part.cpu for part in parts),
        latencies=[x for part in parts for x in part.latencies],
        waits=[x for part in parts for x in part.waits],
        served=sum((part.served for part in parts), Counter()),
        errors=sum((part.errors for part in parts), Counter()),
        timeouts=sum(part.timeouts for part in parts),
        engines=list(engines.values()),
        processes=sum(part.processes for part in parts),
    )


def summarize(samples: Samples) -> LoadSummary:
    """The summary of what was measured."""
    elapsed = samples.elapsed
    return LoadSummary(
        profile=samples.profile,
        concurrency=samples.concurrency,
        processes=samples.processes,
        duration_s=elapsed,
        operations=len(samples.waits),
        succeeded=len(samples.latencies),
        throughput=len(samples.latencies) / elapsed if elapsed > 0 else 0.0,
        latency_ms=distribution(samples.latencies),
        checkout_wait_ms=distribution(samples.waits),
        timeouts=samples.timeouts,
        errors=dict(samples.errors),
        client_cpu=samples.cpu / elapsed if elapsed > 0 else 0.0,
        engines=[
            stats.model_copy(update={"operations": samples.served[stats.name]})
            for stats in samples.engines
        ],
    )
