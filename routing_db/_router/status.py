"""``Router.status()``: one JSON-safe row per engine, from the topology."""

from __future__ import annotations

import time
from typing import Any

from .._engines.make import AppEngine, core, pool_capacity, safe_url
from .._replicas.health import ReplicaState
from .._topology.topology import Topology

__all__ = ["status_rows"]


def _pool_stats(engine: AppEngine) -> dict[str, int | None]:
    pool: Any = core(engine).pool

    def stat(name: str) -> int | None:
        method = getattr(pool, name, None)
        return int(method()) if callable(method) else None

    overflow = stat("overflow")
    capacity = pool_capacity(pool)
    return {
        "size": stat("size"),
        "capacity": capacity or None,  # pool_size + max_overflow
        "checked_out": stat("checkedout"),
        # Connections open beyond pool_size (SQLAlchemy's own count is
        # negative while the pool has not opened all of pool_size yet).
        "overflow": None if overflow is None else max(0, overflow),
        "checked_in": stat("checkedin"),
    }


def _state(replica: ReplicaState) -> str:
    if replica.draining:
        return "draining"
    if replica.ejected or replica.joining or replica.standby is False:
        return "ejected"  # not answering, not yet, or not a standby of ours
    if replica.diverged:
        return "not_streaming"  # not on the current timeline: no reads
    if replica.streaming is False:
        return "not_streaming"  # it serves while within the lag limits
    return "lagging" if replica.lagging else "serving"


def status_rows(topology: Topology) -> list[dict[str, Any]]:
    """Per engine: name, role, state, health, lag and pool stats; no secrets."""
    now = time.monotonic()
    writer = topology.app_writer
    rows: list[dict[str, Any]] = [
        {
            "name": topology.name(writer),
            "role": "writer" if topology.writer_ok else "unknown",
            "state": "serving" if topology.writer_ok else "ejected",
            "url": safe_url(writer.url),
            "healthy": None,  # the writer is never ejected
            "lag_bytes": None,
            "lag_seconds": None,
            "pool": _pool_stats(writer),
        }
    ]
    discovery = topology.discovery
    if discovery is not None:
        # The node the writer's connections go to now, and its URL: the
        # writer's pool follows the primary, whatever URL it was made with.
        node = discovery.primary
        rows[0]["node"] = None if node is None else node.name
        if node is not None:
            rows[0]["url"] = safe_url(node.reader.url)
    for replica in topology.app_replicas:
        state = topology.replica_set.state(core(replica))
        primary = discovery is not None and discovery.owns(replica)
        rows.append(
            {
                "name": topology.name(replica),
                "role": "writer"
                if primary
                else "unknown"
                if state.standby is False
                else "replica",
                "state": "serving" if primary else _state(state),
                "url": safe_url(replica.url),
                "healthy": not state.ejected,
                "ejected": state.ejected,
                "lagging": state.lagging,
                "streaming": state.streaming,
                "eligible": state.available(now, topology.replica_set.half_open),
                "ejections": state.ejections,
                "lag_bytes": state.lag_bytes,
                "lag_seconds": state.lag_seconds,
                "replay_lsn": state.replay_lsn,
                "pool": _pool_stats(replica),
            }
        )
    return rows
