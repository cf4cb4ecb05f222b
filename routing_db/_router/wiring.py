"""The hooks a router puts on each of its engines, by role."""

from __future__ import annotations

import functools

from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncEngine

from .._bounds.connect import install_connect_guard, install_connect_timeout
from .._bounds.read_timeout import install_read_timeout
from .._bounds.thread_read_timeout import (
    install_socket_timeout,
    install_thread_read_timeout,
)
from .._engines.hooks import Hooks
from .._engines.make import AppEngine, core
from .._engines.setup import install_idle_ping, install_replica_setup
from .._engines.slowlog import install_slow_query_log
from .._options import HealthOptions, ObservabilityOptions
from .._replicas.replica_set import ReplicaSet

__all__ = ["hook_engine", "hook_replica"]


def hook_engine(
    engine: AppEngine,
    hooks: Hooks,
    *,
    name: str,
    health: HealthOptions,
    observability: ObservabilityOptions,
) -> None:
    """What every engine gets: the connect bound, the idle check and the
    slow-query log, each if on."""
    if health.connect_timeout is not None:
        install_connect_timeout(engine, hooks, health.connect_timeout)
    if health.ping_after_idle is not None:
        install_idle_ping(engine, hooks, idle_seconds=health.ping_after_idle)
    if observability.slow_query_seconds is not None:
        install_slow_query_log(
            engine,
            hooks,
            name=name,
            threshold=observability.slow_query_seconds,
            log_parameters=observability.log_slow_parameters,
        )


def hook_replica(
    engine: AppEngine,
    hooks: Hooks,
    *,
    name: str,
    health: HealthOptions,
    observability: ObservabilityOptions,
    replica_set: ReplicaSet,
) -> None:
    """A replica's hooks: read-only, standby-checked connections, and the rest."""
    install_replica_setup(
        engine,
        hooks,
        name=name,
        require_standby=health.require_standby,
        seen=functools.partial(replica_set.record_role, core(engine)),
    )
    if health.replica_read_timeout is not None:
        # Ejected wherever in a transaction it hangs: a rerun must not
        # choose it again and wait out the bound once more.
        if isinstance(engine, AsyncEngine):
            install_read_timeout(
                engine,
                hooks,
                health.replica_read_timeout,
                timed_out=functools.partial(replica_set.failed, core(engine)),
            )
        else:
            install_socket_timeout(engine, hooks, health.replica_read_timeout)
    hook_engine(engine, hooks, name=name, health=health, observability=observability)
    # Last: its connect wraps the others' (creators are wrapped in order).
    install_connect_guard(
        engine, hooks, functools.partial(replica_set.may_connect, core(engine))
    )
    if health.replica_read_timeout is not None and isinstance(engine, Engine):
        # After the guard: for psycopg it makes the connection itself.
        install_thread_read_timeout(
            engine,
            hooks,
            health.replica_read_timeout,
            timed_out=functools.partial(replica_set.failed, core(engine)),
        )
