"""``Router``: the writer and replica engines, replica choice, status, disposal."""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any

from sqlalchemy.engine import URL, Engine
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.util import await_only

from ._causal import CausalFloor
from ._decision import DefaultRole, check_default_role
from ._engines import (
    check_url,
    create_engine,
    engine_name,
    install_replica_setup,
    install_writer_hooks,
    safe_url,
)
from ._exceptions import ConfigurationError
from ._health import HealthOptions, ReplicaState
from ._monitor import Monitor
from ._policies import BalancingPolicy, Candidate, make_policy
from ._positions import has_positions, replay_lsn_now
from ._retry import RetryPolicy, is_connection_error

if TYPE_CHECKING:
    from ._settings import RoutingSettings

__all__ = ["Pick", "Router"]

logger = logging.getLogger("routing_db")


class Pick(enum.Enum):
    """Why a replica read did not get a replica."""

    CAUGHT_UP = "caught_up"  # a replica is ready (the engine is returned too)
    CAUSAL = "causal"  # no replica has replayed this context's writes yet
    NONE = "none"  # every replica is ejected, lagging or excluded


def _pool_stats(engine: AsyncEngine) -> dict[str, int | None]:
    pool: Any = engine.sync_engine.pool

    def stat(name: str) -> int | None:
        method = getattr(pool, name, None)
        return int(method()) if callable(method) else None

    return {
        "size": stat("size"),
        "checked_out": stat("checkedout"),
        "overflow": stat("overflow"),
        "checked_in": stat("checkedin"),
    }


class Router:
    """Owns one writer and zero or more replica engines and picks replicas."""

    def __init__(
        self,
        *,
        writer: AsyncEngine,
        replicas: Sequence[AsyncEngine] = (),
        default_role: DefaultRole = "writer",
        fallback_to_writer: bool = True,
        require_standby: bool = True,
        policy: str | BalancingPolicy = "round_robin",
        weights: Sequence[float] | None = None,
        max_lag_bytes: int | None = None,
        max_lag_seconds: float | None = None,
        monitor_interval: float = 0.5,
        eject_after: int = 1,
        eject_window: float = 10.0,
        max_writer_fallbacks: int | None = None,
        sticky_seconds: float = 2.0,
        causal_wait_timeout: float | None = None,
        retry: RetryPolicy | None = None,
    ) -> None:
        if writer is None:
            raise ConfigurationError("Router needs a writer engine")
        for engine in (writer, *replicas):
            if not isinstance(engine, AsyncEngine):
                raise ConfigurationError(
                    "Router takes AsyncEngine objects (create_async_engine with an "
                    f"asyncio driver), got {type(engine).__name__}"
                )
        if any(replica is writer for replica in replicas):
            # Its connections would be made read-only: the writer could not write.
            raise ConfigurationError("the writer engine cannot also be a replica")
        if len({id(replica) for replica in replicas}) != len(replicas):
            raise ConfigurationError("the same replica engine is listed twice")
        check_default_role(default_role)
        _check_options(
            weights=weights,
            replicas=len(replicas),
            monitor_interval=monitor_interval,
            max_writer_fallbacks=max_writer_fallbacks,
            sticky_seconds=sticky_seconds,
            causal_wait_timeout=causal_wait_timeout,
        )
        self.writer = writer
        self.replicas: tuple[AsyncEngine, ...] = tuple(replicas)
        self.default_role: DefaultRole = default_role
        self.fallback_to_writer = fallback_to_writer
        self.max_writer_fallbacks = max_writer_fallbacks
        self.sticky_seconds = sticky_seconds
        self.causal_wait_timeout = causal_wait_timeout
        self.retry = retry or RetryPolicy()
        self._policy = make_policy(policy)
        health = HealthOptions(
            eject_after=eject_after,
            eject_window=eject_window,
            max_lag_bytes=max_lag_bytes,
            max_lag_seconds=max_lag_seconds,
        )
        self._names = self._engine_names()
        for replica in self.replicas:
            install_replica_setup(
                replica, name=self._names[replica], require_standby=require_standby
            )
        install_writer_hooks(writer)
        self._sync_writer: Engine = writer.sync_engine
        self._sync_replicas: tuple[Engine, ...] = tuple(
            replica.sync_engine for replica in self.replicas
        )
        self._async_by_sync: dict[Engine, AsyncEngine] = {
            engine.sync_engine: engine for engine in (writer, *self.replicas)
        }
        self._states: dict[Engine, ReplicaState] = {
            engine: ReplicaState(health) for engine in self._sync_replicas
        }
        self._weights = tuple(weights) if weights else (1.0,) * len(self.replicas)
        self._positions = has_positions(writer.dialect.name) and all(
            has_positions(replica.dialect.name) for replica in self.replicas
        )
        self._fallbacks = 0
        self.fallbacks_total = 0
        self._monitor = Monitor(self, interval=monitor_interval)

    def _engine_names(self) -> dict[AsyncEngine, str]:
        names: dict[AsyncEngine, str] = {self.writer: engine_name(self.writer)}
        seen: dict[str, int] = {}
        for replica in self.replicas:
            base = engine_name(replica)
            seen[base] = seen.get(base, 0) + 1
            names[replica] = base if seen[base] == 1 else f"{base}#{seen[base]}"
        return names

    @classmethod
    def from_urls(
        cls,
        writer_url: str | URL,
        replica_urls: Sequence[str | URL] = (),
        *,
        writer_kwargs: Mapping[str, Any] | None = None,
        replica_kwargs: Mapping[str, Any] | None = None,
        router_options: Mapping[str, Any] | None = None,
        **engine_kwargs: Any,
    ) -> Router:
        """Create the engines; ``engine_kwargs`` go to every ``create_async_engine``.

        Router options (``default_role``, ``policy``, ``max_lag_bytes``, ...) may
        be given here by name too, or collected in ``router_options``.
        """
        if not writer_url:
            raise ConfigurationError("writer_url is required")
        if isinstance(replica_urls, str | URL):
            raise ConfigurationError("replica_urls must be a list of URLs")
        options = dict(router_options or {})
        for name in _ROUTER_OPTIONS.intersection(engine_kwargs):
            options[name] = engine_kwargs.pop(name)
        writer_u = check_url(writer_url, field="writer_url")
        replica_us = [
            check_url(url, field=f"replica_urls[{i}]")
            for i, url in enumerate(replica_urls)
        ]
        # Pre-ping by default: a pooled connection left dead by a server
        # restart is replaced at checkout instead of failing the statement.
        common = {"pool_pre_ping": True, **engine_kwargs}
        writer = create_engine(
            writer_u, field="writer_url", **{**common, **(writer_kwargs or {})}
        )
        replicas = [
            create_engine(
                url, field=f"replica_urls[{i}]", **{**common, **(replica_kwargs or {})}
            )
            for i, url in enumerate(replica_us)
        ]
        return cls(writer=writer, replicas=replicas, **options)

    @classmethod
    def from_settings(cls, settings: RoutingSettings | None = None) -> Router:
        """Build a router from ``RoutingSettings``; ``None`` reads the environment."""
        # Imported here so the core never needs pydantic-settings at import time.
        from ._settings import RoutingSettings

        if settings is None:
            settings = RoutingSettings()
        return cls.from_urls(**settings.router_kwargs())

    # -- replica choice (called from the session's get_bind, in a greenlet) --

    def _state(self, engine: Engine | AsyncEngine) -> ReplicaState:
        if isinstance(engine, AsyncEngine):
            engine = engine.sync_engine
        return self._states[engine]

    def _candidate(self, index: int, engine: Engine) -> Candidate:
        pool: Any = engine.pool
        size = getattr(pool, "size", None)
        capacity = (size() + max(getattr(pool, "_max_overflow", 0), 0)) if size else 0
        checkedout = getattr(pool, "checkedout", None)
        return Candidate(
            index=index,
            name=self._names[self.replicas[index]],
            weight=self._weights[index],
            checked_out=checkedout() if checkedout else 0,
            capacity=capacity,
        )

    def _pick_replica(
        self, floor: CausalFloor | None, exclude: frozenset[Engine] = frozenset()
    ) -> tuple[Pick, Engine | None]:
        """Choose the replica for a new transaction that must see ``floor``."""
        now = time.monotonic()
        available = [
            (index, engine)
            for index, engine in enumerate(self._sync_replicas)
            if engine not in exclude and self._states[engine].available(now)
        ]
        if not available:
            return Pick.NONE, None
        need = self._lsn_needed(floor)
        if need is None:
            if floor is not None and self._within_sticky_window(floor):
                return Pick.CAUSAL, None
            return Pick.CAUGHT_UP, self._choose(available)
        # The policy picks among all available replicas, so balancing does not
        # depend on which positions happen to be cached.
        chosen = self._choose(available)
        if self._states[chosen].caught_up(need):
            return Pick.CAUGHT_UP, chosen  # the cached position: no round trip
        if self._check_replay(chosen, need):
            return Pick.CAUGHT_UP, chosen
        ready = [
            item
            for item in available
            if item[1] is not chosen and self._states[item[1]].caught_up(need)
        ]
        if ready:
            return Pick.CAUGHT_UP, self._choose(ready)
        engine = self._wait_for_replay(
            [engine for _, engine in available if engine is not chosen], chosen, need
        )
        return (Pick.CAUGHT_UP, engine) if engine is not None else (Pick.CAUSAL, None)

    def _lsn_needed(self, floor: CausalFloor | None) -> int | None:
        if floor is None or floor.lsn is None or not self._positions:
            return None
        return floor.lsn

    def _within_sticky_window(self, floor: CausalFloor) -> bool:
        return (
            floor.wrote_at is not None
            and time.time() - floor.wrote_at < self.sticky_seconds
        )

    def _choose(self, available: list[tuple[int, Engine]]) -> Engine:
        if len(available) == 1:
            return available[0][1]
        candidates = [self._candidate(index, engine) for index, engine in available]
        chosen = self._policy.choose(candidates)
        return self._sync_replicas[chosen.index]

    def _check_replay(self, engine: Engine, need: int) -> bool:
        """Ask ``engine`` for its replay position now; is it at ``need``?"""
        state = self._states[engine]
        try:
            lsn = replay_lsn_now(engine)
        except Exception as exc:
            if not is_connection_error(exc):
                raise
            self._replica_failed(engine, exc)
            return False
        if lsn is not None:
            state.raise_replay_lsn(lsn)
        return state.caught_up(need)

    def _wait_for_replay(
        self, others: list[Engine], chosen: Engine, need: int
    ) -> Engine | None:
        # Ask the others once, then keep asking every replica until
        # causal_wait_timeout when one is configured. Each replica is judged
        # by its own position: one caught up never vouches for another.
        for engine in others:
            if self._check_replay(engine, need):
                return engine
        deadline = time.monotonic() + (self.causal_wait_timeout or 0.0)
        delay = 0.005
        while (remaining := deadline - time.monotonic()) > 0:
            await_only(asyncio.sleep(min(delay, remaining)))
            delay = min(delay * 2, 0.1)
            for engine in (chosen, *others):
                if self._check_replay(engine, need):
                    return engine
        return None

    # -- what sessions and the monitor report --

    def _replica_failed(self, engine: Engine, error: BaseException) -> None:
        state = self._states.get(engine)
        if state is not None and state.record_failure(time.monotonic()):
            logger.warning(
                "routing_db: replica %s ejected after a connection failure (%s)",
                self._names[self._async_by_sync[engine]],
                type(error).__name__,
            )

    def _replica_succeeded(self, engine: Engine) -> None:
        state = self._states.get(engine)
        if state is not None and state.record_success():
            logger.warning(
                "routing_db: replica %s re-admitted",
                self._names[self._async_by_sync[engine]],
            )

    def _record_lag(
        self,
        engine: Engine,
        *,
        replay_lsn: int | None,
        lag_bytes: int | None,
        lag_seconds: float | None,
    ) -> None:
        state = self._states[engine]
        was = state.lagging
        state.record_lag(
            replay_lsn=replay_lsn, lag_bytes=lag_bytes, lag_seconds=lag_seconds
        )
        if state.lagging != was:
            logger.warning(
                "routing_db: replica %s %s (lag %s bytes, %s s)",
                self._names[self._async_by_sync[engine]],
                "over the lag limit, skipped" if state.lagging else "back under it",
                lag_bytes,
                lag_seconds,
            )

    def _to_async(self, engine: Engine) -> AsyncEngine | None:
        return self._async_by_sync.get(engine)

    def status(self) -> list[dict[str, Any]]:
        """Per engine: name, role, health, lag and pool stats; JSON-safe, no secrets."""
        now = time.monotonic()
        rows: list[dict[str, Any]] = [
            {
                "name": self._names[self.writer],
                "role": "writer",
                "url": safe_url(self.writer.url),
                "healthy": None,  # the writer is never ejected
                "lag_bytes": None,
                "lag_seconds": None,
                "pool": _pool_stats(self.writer),
            }
        ]
        for replica in self.replicas:
            state = self._state(replica)
            rows.append(
                {
                    "name": self._names[replica],
                    "role": "replica",
                    "url": safe_url(replica.url),
                    "healthy": not state.ejected,
                    "ejected": state.ejected,
                    "lagging": state.lagging,
                    "eligible": state.available(now),
                    "ejections": state.ejections,
                    "lag_bytes": state.lag_bytes,
                    "lag_seconds": state.lag_seconds,
                    "replay_lsn": state.replay_lsn,
                    "pool": _pool_stats(replica),
                }
            )
        return rows

    async def start(self) -> None:
        """Start the background health and lag monitor (idempotent)."""
        if self.replicas:
            await self._monitor.poll_once()  # status is filled before first use
            self._monitor.start()

    async def stop(self) -> None:
        """Stop the monitor; the engines stay usable."""
        await self._monitor.stop()

    async def dispose(self) -> None:
        """Stop the monitor and close every pool of every engine."""
        await self.stop()
        await asyncio.gather(
            *(engine.dispose() for engine in (self.writer, *self.replicas))
        )

    async def __aenter__(self) -> Router:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.dispose()

    def __repr__(self) -> str:
        replicas = ", ".join(repr(safe_url(r.url)) for r in self.replicas)
        return f"Router(writer={safe_url(self.writer.url)!r}, replicas=[{replicas}])"

    __str__ = __repr__


_ROUTER_OPTIONS = frozenset(
    {
        "default_role",
        "fallback_to_writer",
        "require_standby",
        "policy",
        "weights",
        "max_lag_bytes",
        "max_lag_seconds",
        "monitor_interval",
        "eject_after",
        "eject_window",
        "max_writer_fallbacks",
        "sticky_seconds",
        "causal_wait_timeout",
        "retry",
    }
)


def _check_options(
    *,
    weights: Sequence[float] | None,
    replicas: int,
    monitor_interval: float,
    max_writer_fallbacks: int | None,
    sticky_seconds: float,
    causal_wait_timeout: float | None,
) -> None:
    if weights is not None and (
        len(weights) != replicas or any(w < 0 for w in weights)
    ):
        raise ConfigurationError(
            f"weights needs one number >= 0 per replica ({replicas}), "
            f"got {len(weights)}"
        )
    if monitor_interval <= 0:
        raise ConfigurationError("monitor_interval must be > 0 seconds")
    if max_writer_fallbacks is not None and max_writer_fallbacks < 0:
        raise ConfigurationError("max_writer_fallbacks must be >= 0 or None")
    if sticky_seconds < 0:
        raise ConfigurationError("sticky_seconds must be >= 0")
    if causal_wait_timeout is not None and causal_wait_timeout < 0:
        raise ConfigurationError("causal_wait_timeout must be >= 0 or None")
