"""Prometheus metrics for a ``Router`` or ``SyncRouter`` (needs
``prometheus_client``: the ``metrics`` extra).

    from prometheus_client import REGISTRY
    from routing_db.metrics import register_metrics

    metrics = register_metrics(router)          # or registry=your_registry

Engine labels are ``host:port/database``: never a password.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from typing import Any

from ._engines.observe import observe
from ._exceptions import missing_extra
from ._router.base import RouterBase

try:
    from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram
    from prometheus_client.core import GaugeMetricFamily
    from prometheus_client.registry import Collector
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise missing_extra("routing_db.metrics", "prometheus_client", "metrics") from exc

__all__ = ["RouterMetrics", "register_metrics"]

# Per registry, the metrics registered under each namespace (one router's).
_REGISTERED: weakref.WeakKeyDictionary[CollectorRegistry, dict[str, RouterMetrics]] = (
    weakref.WeakKeyDictionary()
)

_WAIT_BUCKETS = (
    *(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5),
    *(1.0, 2.5, 5.0, 10.0, 30.0),
)
_HOLD_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 60.0)


class _StatusCollector(Collector):
    """Pool and replica gauges, read from ``router.status()`` at scrape time."""

    def __init__(self, router: RouterBase[Any], namespace: str) -> None:
        self._router = router
        self._ns = namespace

    def collect(self) -> Iterator[GaugeMetricFamily]:
        ns = self._ns
        pool = {
            key: GaugeMetricFamily(f"{ns}_pool_{key}", help_, labels=["engine", "role"])
            for key, help_ in (
                ("size", "Pool size (persistent connections)."),
                ("capacity", "Connections the pool may open: size + max_overflow."),
                ("checked_out", "Connections checked out now."),
                ("overflow", "Connections open beyond the pool size."),
                ("checked_in", "Idle connections in the pool."),
            )
        }
        lag_bytes = GaugeMetricFamily(
            f"{ns}_replica_lag_bytes", "WAL not yet replayed.", labels=["engine"]
        )
        lag_seconds = GaugeMetricFamily(
            f"{ns}_replica_lag_seconds",
            "Replication lag in seconds.",
            labels=["engine"],
        )
        healthy = GaugeMetricFamily(
            f"{ns}_replica_eligible",
            "1 when the replica may serve reads (healthy and under lag limits).",
            labels=["engine"],
        )
        streaming = GaugeMetricFamily(
            f"{ns}_replica_streaming",
            "1 while the replica streams from its primary, 0 when it stopped.",
            labels=["engine"],
        )
        writer = GaugeMetricFamily(
            f"{ns}_writer_available",
            "1 while the writer takes writes (0 during a failover).",
            labels=["engine"],
        )
        rows = self._router.status()
        writer.add_metric(
            [rows[0]["name"]], 1.0 if rows[0]["role"] == "writer" else 0.0
        )
        for row in rows:
            for key, family in pool.items():
                value = row["pool"].get(key)
                if value is not None:
                    family.add_metric([row["name"], row["role"]], value)
            if row is rows[0]:
                continue  # the writer has no lag
            healthy.add_metric([row["name"]], 1.0 if row["eligible"] else 0.0)
            if row["lag_bytes"] is not None:
                lag_bytes.add_metric([row["name"]], row["lag_bytes"])
            if row["lag_seconds"] is not None:
                lag_seconds.add_metric([row["name"]], row["lag_seconds"])
            if row["streaming"] is not None:
                streaming.add_metric([row["name"]], 1.0 if row["streaming"] else 0.0)
        yield from pool.values()
        yield from (lag_bytes, lag_seconds, healthy, streaming, writer)


class RouterMetrics:
    """The metrics of one router on one registry; ``unregister()`` removes them."""

    def __init__(
        self, router: RouterBase[Any], registry: CollectorRegistry, namespace: str
    ):
        self._router = router
        self._registry = registry
        self._namespace = namespace
        self._unregistered = False
        ns = namespace

        def counter(name: str, doc: str, *labels: str) -> Counter:
            return Counter(f"{ns}_{name}", doc, labels, registry=registry)

        def histogram(name: str, doc: str, buckets: Any, *labels: str) -> Histogram:
            return Histogram(
                f"{ns}_{name}", doc, labels, buckets=buckets, registry=registry
            )

        self.statements = counter(
            "statements",
            "Statements routed, by engine, role and reason.",
            "engine",
            "role",
            "reason",
        )
        self.fallbacks = counter(
            "writer_fallbacks",
            "Replica reads served by the writer because no replica was available.",
            "engine",
        )
        self.ejections = counter("replica_ejections", "Replicas ejected.", "engine")
        self.role_changes = counter(
            "role_changes",
            "Nodes found in another role, by engine and the role found.",
            "engine",
            "role",
        )
        self.readmissions = counter(
            "replica_readmissions", "Ejected replicas re-admitted.", "engine"
        )
        self.retries = counter(
            "retries", "Retry sequences, by kind and outcome.", "kind", "outcome"
        )
        self.starvation = counter(
            "starvation_warnings",
            "Starvation detector warnings, by engine and kind (hold, checkout_wait).",
            "engine",
            "kind",
        )
        self.checkout_wait = histogram(
            "checkout_wait_seconds",
            "Time to obtain a pooled connection.",
            _WAIT_BUCKETS,
            "engine",
        )
        self.checkout_timeouts = counter(
            "checkout_timeouts", "Checkouts that waited out pool_timeout.", "engine"
        )
        self.hold = histogram(
            "connection_hold_seconds",
            "How long a connection stayed checked out.",
            _HOLD_BUCKETS,
            "engine",
        )
        self._status = _StatusCollector(router, ns)
        registry.register(self._status)
        self._observers = [
            observe(engine, name) for name, engine in router.topology.engines()
        ]
        for observer in self._observers:
            observer.subscribe(self)
        router.add_listener(self)

    # routing events
    def routed(self, engine: str, role: str, reason: str) -> None:
        """Count a routed statement."""
        self.statements.labels(engine, role, reason).inc()

    def fell_back(self, engine: str) -> None:
        """Count a writer fallback."""
        self.fallbacks.labels(engine).inc()

    def ejected(self, engine: str) -> None:
        """Count an ejection."""
        self.ejections.labels(engine).inc()

    def readmitted(self, engine: str) -> None:
        """Count a re-admission."""
        self.readmissions.labels(engine).inc()

    def role_changed(self, engine: str, old: str, new: str) -> None:
        """Count a role change."""
        self.role_changes.labels(engine, new).inc()

    def streaming_changed(self, engine: str, streaming: bool) -> None:
        """Nothing to count: ``routing_db_replica_streaming`` shows the state."""

    def retried(self, kind: str, outcome: str) -> None:
        """Count a retry sequence."""
        self.retries.labels(kind, outcome).inc()

    def starved(self, engine: str, kind: str) -> None:
        """Count a starvation warning."""
        self.starvation.labels(engine, kind).inc()

    # pool events
    def waited(self, name: str, seconds: float, timed_out: bool) -> None:
        """Observe a checkout wait."""
        self.checkout_wait.labels(name).observe(seconds)
        if timed_out:
            self.checkout_timeouts.labels(name).inc()

    def held(self, name: str, seconds: float, where: str | None) -> None:
        """Observe how long a connection was held."""
        self.hold.labels(name).observe(seconds)

    def disposed(self) -> None:
        """The router is closed: its metrics leave the registry."""
        self.unregister()

    def unregister(self) -> None:
        """Stop collecting and remove every metric from the registry (idempotent)."""
        if self._unregistered:
            return
        self._unregistered = True
        current = _REGISTERED.get(self._registry, {})
        if current.get(self._namespace) is self:
            del current[self._namespace]
        self._router.remove_listener(self)
        for observer in self._observers:
            observer.unsubscribe(self)
        for collector in (
            self.statements,
            self.fallbacks,
            self.ejections,
            self.readmissions,
            self.role_changes,
            self.retries,
            self.starvation,
            self.checkout_wait,
            self.checkout_timeouts,
            self.hold,
            self._status,
        ):
            self._registry.unregister(collector)


def register_metrics(
    router: RouterBase[Any],
    registry: CollectorRegistry | None = None,
    *,
    namespace: str = "routing_db",
) -> RouterMetrics:
    """Register a router's metrics on ``registry`` (default: the global one).

    They leave the registry when the router is disposed. Registering another
    router under the same ``namespace`` replaces the metrics there (an app
    started again in one process: a test client per test).
    """
    registry = registry if registry is not None else REGISTRY
    current = _REGISTERED.setdefault(registry, {})
    previous = current.get(namespace)
    if previous is not None:
        previous.unregister()
    metrics = RouterMetrics(router, registry, namespace)
    current[namespace] = metrics
    return metrics
