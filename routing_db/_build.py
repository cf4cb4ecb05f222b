"""What ``Router.from_urls`` does before it has engines: names, URLs, defaults."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine

from ._engines import create_engine
from ._exceptions import ConfigurationError
from ._options import HealthOptions

__all__ = ["DEFAULT_PING_AFTER_IDLE", "EngineMaker", "engine_names", "idle_check"]

DEFAULT_PING_AFTER_IDLE = 1.0


def engine_names(
    writer_name: str | None, replica_names: Sequence[str] | None, replicas: int
) -> list[str | None]:
    """The given names, writer first, ``None`` where none was given; checked."""
    if isinstance(replica_names, str) or (
        replica_names is not None and len(replica_names) != replicas
    ):
        raise ConfigurationError("replica_names needs one name per replica URL")
    names: list[str | None] = [writer_name, *(replica_names or ())]
    names += [None] * (1 + replicas - len(names))
    if any(name is not None and not name.strip() for name in names):
        raise ConfigurationError("an engine name cannot be empty")
    return names


def idle_check(engine_kwargs: dict[str, Any], options: dict[str, Any]) -> None:
    """Turn the idle check on unless ``pool_pre_ping`` was given (in place).

    A pooled connection left dead by a server restart must be replaced at
    checkout, not fail a statement. The idle check does it for free when the
    driver saw the socket close, and pings only after an idle second, where
    SQLAlchemy's pre-ping (BEGIN; SELECT; ROLLBACK on asyncpg) costs three
    round trips on every checkout (benchmarks/RESULTS.md compares them).
    """
    if engine_kwargs.get("pool_pre_ping") is not None:
        return
    engine_kwargs["pool_pre_ping"] = False
    health = options.get("health")
    if health is None:
        options.setdefault("ping_after_idle", DEFAULT_PING_AFTER_IDLE)
    elif isinstance(health, HealthOptions) and health.ping_after_idle is None:
        options["health"] = dataclasses.replace(
            health, ping_after_idle=DEFAULT_PING_AFTER_IDLE
        )


@dataclasses.dataclass(frozen=True)
class EngineMaker:
    """Makes ``from_urls``' engines: shared keywords, then the role's own."""

    engine_kwargs: Mapping[str, Any]
    role_kwargs: Mapping[str, Any] | None
    pgbouncer: bool

    def __call__(self, url: URL, field: str, name: str | None) -> AsyncEngine:
        """An engine for ``url``; errors name ``field``, never the password."""
        kwargs = {**self.engine_kwargs, **(self.role_kwargs or {})}
        if name is not None:
            kwargs["logging_name"] = name
        return create_engine(url, field=field, pgbouncer=self.pgbouncer, **kwargs)
