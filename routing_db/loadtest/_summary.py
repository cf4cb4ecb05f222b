"""The result of a load run: plain data, JSON-serialisable."""

from __future__ import annotations

import math
from collections.abc import Sequence

from pydantic import BaseModel

__all__ = ["Distribution", "EngineStats", "LoadSummary", "distribution"]


_CLIENT_BOUND = 0.9  # client_cpu per process above which the client was the limit


class Distribution(BaseModel):
    """Percentiles of a list of durations, in milliseconds."""

    count: int
    p50: float
    p95: float
    p99: float
    max: float
    mean: float


def _percentile(ordered: Sequence[float], q: float) -> float:
    # Nearest rank: a value that was actually observed.
    index = max(math.ceil(q * len(ordered)) - 1, 0)
    return ordered[index]


def distribution(seconds: Sequence[float]) -> Distribution:
    """Summarise durations given in seconds as milliseconds."""
    if not seconds:
        return Distribution(count=0, p50=0.0, p95=0.0, p99=0.0, max=0.0, mean=0.0)
    ordered = sorted(seconds)
    ms = 1000.0
    return Distribution(
        count=len(ordered),
        p50=_percentile(ordered, 0.50) * ms,
        p95=_percentile(ordered, 0.95) * ms,
        p99=_percentile(ordered, 0.99) * ms,
        max=ordered[-1] * ms,
        mean=sum(ordered) / len(ordered) * ms,
    )


class EngineStats(BaseModel):
    """One engine during the run."""

    name: str
    role: str
    operations: int  # operations that used this engine
    checkouts: int
    peak_checked_out: int
    overflow_used: int
    timeouts: int


class LoadSummary(BaseModel):
    """Throughput, latency, checkout wait, failures and where work ran."""

    profile: str
    concurrency: int
    duration_s: float
    operations: int
    succeeded: int
    throughput: float  # successful operations per second
    latency_ms: Distribution
    checkout_wait_ms: Distribution
    timeouts: int
    errors: dict[str, int]
    engines: list[EngineStats]
    # CPU seconds the load generator used per second of the run, over all its
    # processes. Near 1.0 per process, the client's event loops were the
    # bottleneck, not the database.
    client_cpu: float = 0.0
    processes: int = 1

    @property
    def client_bound(self) -> bool:
        """Did the load generator use (nearly) a whole core in each process?"""
        return self.client_cpu / self.processes >= _CLIENT_BOUND

    def row(self) -> dict[str, object]:
        """The headline numbers, for a table."""
        spread = {"processes": self.processes} if self.processes > 1 else {}
        return {
            **spread,
            "concurrency": self.concurrency,
            "ops/s": round(self.throughput, 1),
            "p50 ms": round(self.latency_ms.p50, 2),
            "p99 ms": round(self.latency_ms.p99, 2),
            "wait p99 ms": round(self.checkout_wait_ms.p99, 2),
            "timeouts": self.timeouts,
            "errors": sum(self.errors.values()),
            "client cpu": round(self.client_cpu, 2),
            "served by": self.served_by(),
        }

    def replica_share(self) -> float:
        """Percent of the operations served by replicas (0 when none ran)."""
        total = sum(engine.operations for engine in self.engines)
        replicas = sum(e.operations for e in self.engines if e.role == "replica")
        return 100.0 * replicas / total if total else 0.0

    def served_by(self) -> str:
        """Which role served the operations, as shares: ``writer 20%/replica 80%``."""
        by_role: dict[str, int] = {}
        for engine in self.engines:
            by_role[engine.role] = by_role.get(engine.role, 0) + engine.operations
        total = sum(by_role.values())
        if not total:
            return "-"
        return "/".join(
            f"{role} {round(100 * count / total)}%" for role, count in by_role.items()
        )
