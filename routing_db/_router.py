"""``Router``: the writer and replica engines, replica choice, status, disposal."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any

from sqlalchemy.engine import URL, Engine
from sqlalchemy.ext.asyncio import AsyncEngine

from ._decision import DefaultRole, check_default_role
from ._engines import (
    check_url,
    create_engine,
    engine_name,
    install_replica_setup,
    safe_url,
)
from ._exceptions import ConfigurationError

if TYPE_CHECKING:
    from ._settings import RoutingSettings

__all__ = ["Router"]


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
        self.writer = writer
        self.replicas: tuple[AsyncEngine, ...] = tuple(replicas)
        self.default_role: DefaultRole = default_role
        self.fallback_to_writer = fallback_to_writer
        self._names = self._engine_names()
        for replica in self.replicas:
            install_replica_setup(
                replica, name=self._names[replica], require_standby=require_standby
            )
        self._sync_writer: Engine = writer.sync_engine
        self._sync_replicas: tuple[Engine, ...] = tuple(
            replica.sync_engine for replica in self.replicas
        )
        self._async_by_sync: dict[Engine, AsyncEngine] = {
            engine.sync_engine: engine for engine in (writer, *self.replicas)
        }
        self._round_robin = itertools.count()

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
        default_role: DefaultRole = "writer",
        fallback_to_writer: bool = True,
        require_standby: bool = True,
        **engine_kwargs: Any,
    ) -> Router:
        """Create the engines; ``engine_kwargs`` go to every ``create_async_engine``."""
        if not writer_url:
            raise ConfigurationError("writer_url is required")
        if isinstance(replica_urls, str | URL):
            raise ConfigurationError("replica_urls must be a list of URLs")
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
        return cls(
            writer=writer,
            replicas=replicas,
            default_role=default_role,
            fallback_to_writer=fallback_to_writer,
            require_standby=require_standby,
        )

    @classmethod
    def from_settings(cls, settings: RoutingSettings | None = None) -> Router:
        """Build a router from ``RoutingSettings``; ``None`` reads the environment."""
        # Imported here so the core never needs pydantic-settings at import time.
        from ._settings import RoutingSettings

        if settings is None:
            settings = RoutingSettings()
        return cls.from_urls(**settings.router_kwargs())

    def _choose_replica(self) -> Engine | None:
        """Pick the replica for a new session transaction (round-robin)."""
        replicas = self._sync_replicas
        if not replicas:
            return None
        return replicas[next(self._round_robin) % len(replicas)]

    def _to_async(self, engine: Engine) -> AsyncEngine | None:
        return self._async_by_sync.get(engine)

    def status(self) -> list[dict[str, Any]]:
        """Per engine: name, role, health, lag and pool stats; JSON-safe, no secrets."""
        return [
            {
                "name": self._names[engine],
                "role": role,
                "url": safe_url(engine.url),
                # Filled by the health/lag monitor (issue B); None = not measured.
                "healthy": None,
                "lag_bytes": None,
                "lag_seconds": None,
                "pool": _pool_stats(engine),
            }
            for role, engine in (
                ("writer", self.writer),
                *(("replica", replica) for replica in self.replicas),
            )
        ]

    async def dispose(self) -> None:
        """Close every pool of every engine."""
        await asyncio.gather(
            *(engine.dispose() for engine in (self.writer, *self.replicas))
        )

    async def __aenter__(self) -> Router:
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
