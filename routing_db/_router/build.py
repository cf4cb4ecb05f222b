"""A router's engines before it routes: made from URLs or a cluster, checked, named."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from sqlalchemy.engine import URL, Engine
from sqlalchemy.ext.asyncio import AsyncEngine

from .._engines.make import AppEngine, core, create_engine, engine_name, url_name
from .._exceptions import ConfigurationError
from .._options import BY_NAME, HealthOptions
from .._topology.discovery import Node

__all__ = [
    "EngineMaker",
    "cluster_engines",
    "engine_names",
    "engine_names_of",
    "idle_check",
    "writer_reader",
]

ProbeMaker = Callable[[URL], AppEngine]


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
        options.setdefault("ping_after_idle", BY_NAME["ping_after_idle"].built)
    elif isinstance(health, HealthOptions) and health.ping_after_idle is None:
        options["health"] = dataclasses.replace(
            health, ping_after_idle=BY_NAME["ping_after_idle"].built
        )


@dataclasses.dataclass(frozen=True)
class EngineMaker:
    """Makes ``from_urls``' engines: shared keywords, then the role's own."""

    engine_kwargs: Mapping[str, Any]
    role_kwargs: Mapping[str, Any] | None
    pgbouncer: bool
    sync: bool = False  # SyncRouter's: create_engine

    def __call__(self, url: URL, field: str, name: str | None) -> Any:
        """An engine for ``url``; errors name ``field``, never the password."""
        kwargs = {**self.engine_kwargs, **(self.role_kwargs or {})}
        if name is not None:
            kwargs["logging_name"] = name
        return create_engine(
            url, field=field, pgbouncer=self.pgbouncer, sync=self.sync, **kwargs
        )


def cluster_engines(
    urls: Sequence[URL],
    *,
    names: Sequence[str | None],
    make_writer: EngineMaker,
    make_reader: EngineMaker,
) -> tuple[AppEngine, list[Node], ProbeMaker]:
    """``from_cluster``'s engines: the writer's pool, each node's reader and
    probe; and how to make a probe for a node added later."""
    backends = {url.get_backend_name() for url in urls}
    if "sqlite" in backends:
        raise ConfigurationError("a SQLite database has no cluster to find a writer in")
    if len(backends) > 1:
        raise ConfigurationError(f"cluster_urls mix databases: {sorted(backends)}")
    if len({url_name(url) for url in urls}) != len(urls):
        raise ConfigurationError("cluster_urls lists the same node twice")
    # One connection each: role checks run alone, never behind reads.
    make_probe = dataclasses.replace(
        make_reader,
        role_kwargs={
            **(make_reader.role_kwargs or {}),
            "pool_size": 1,
            "max_overflow": 0,
        },
    )

    def probe(url: URL) -> AppEngine:
        engine: AppEngine = make_probe(url, "cluster_urls", None)
        return engine

    nodes = []
    for i, url in enumerate(urls):
        reader = make_reader(url, f"cluster_urls[{i}]", names[i])
        nodes.append(Node(name=engine_name(reader), reader=reader, probe=probe(url)))
    # Its URL is the first node's; its connections go to the primary's.
    return make_writer(urls[0], "cluster_urls[0]", "writer"), nodes, probe


def engine_names_of(
    writer: AppEngine, replicas: Sequence[AppEngine], *, sync: bool = False
) -> dict[AppEngine, str]:
    """Each of a router's engines' label, checked: unique, and engines only."""
    if writer is None:
        raise ConfigurationError("Router needs a writer engine")
    for engine in (writer, *replicas):
        if sync and not isinstance(engine, Engine):
            raise ConfigurationError(
                "SyncRouter takes Engine objects (create_engine with a "
                f"synchronous driver), got {type(engine).__name__}"
            )
        if not sync and not isinstance(engine, AsyncEngine):
            raise ConfigurationError(
                "Router takes AsyncEngine objects (create_async_engine with an "
                f"asyncio driver), got {type(engine).__name__}"
            )
    if any(replica is writer for replica in replicas):
        # Its connections would be made read-only: the writer could not write.
        raise ConfigurationError("the writer engine cannot also be a replica")
    if len({id(replica) for replica in replicas}) != len(replicas):
        raise ConfigurationError("the same replica engine is listed twice")
    given = [core(e).logging_name for e in (writer, *replicas)]
    named = [name for name in given if name]
    if len(set(named)) != len(named):
        # Two engines under one name would share their metrics and logs.
        raise ConfigurationError(
            f"engine names (logging_name) must be unique, got {named}"
        )
    names: dict[AppEngine, str] = {writer: engine_name(writer)}
    seen: dict[str, int] = {}
    for replica in replicas:
        base = engine_name(replica)
        seen[base] = seen.get(base, 0) + 1
        names[replica] = base if seen[base] == 1 else f"{base}#{seen[base]}"
    return names


_READ_ONLY = "postgresql_readonly"


def writer_reader(writer: AppEngine, weight: float) -> AppEngine | None:
    """The writer as one more reader: same pool, every transaction READ ONLY."""
    if not weight:
        return None
    characteristics = getattr(writer.dialect, "connection_characteristics", {})
    if _READ_ONLY not in characteristics:
        raise ConfigurationError(
            "writer_read_weight needs a PostgreSQL writer (its read transactions "
            f"are made READ ONLY); {writer.dialect.name} is not supported"
        )
    # A distinct Engine object over the writer's pool: the session keeps its
    # connection apart from the writer's own, so a later write in the same
    # transaction never lands on the read-only one; SQLAlchemy resets the
    # characteristic when the connection returns to the pool.
    return writer.execution_options(**{_READ_ONLY: True})
