"""A router's engines made: URLs checked, engines created and named (either face)."""

from __future__ import annotations

from typing import Any, Literal, overload

import sqlalchemy
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from .._backends.registry import BACKENDS, backend_for
from .._compat import max_overflow
from .._exceptions import ConfigurationError

__all__ = [
    "AppEngine",
    "behind_pgbouncer",
    "check_url",
    "core",
    "create_engine",
    "dispose",
    "engine_name",
    "pool_capacity",
    "safe_url",
    "url_name",
]

_URL_FORM = "dialect+driver://user:password@host:port/database"


AppEngine = AsyncEngine | Engine


def core(engine: AppEngine) -> Engine:
    """The ``Engine`` routing works with: an ``AsyncEngine``'s ``sync_engine``."""
    return engine.sync_engine if isinstance(engine, AsyncEngine) else engine


async def dispose(engine: AppEngine) -> None:
    """Close ``engine``'s pooled connections, as its face does it."""
    if isinstance(engine, AsyncEngine):
        await engine.dispose()
    else:
        engine.dispose()


def safe_url(url: URL) -> str:
    """Render ``url`` with its password masked."""
    return url.render_as_string(hide_password=True)


def check_url(value: str | URL, *, field: str, sync: bool = False) -> URL:
    """Parse ``value`` and require an asyncio driver (``sync``: a synchronous
    one, for ``SyncRouter``); errors never show a password."""
    try:
        url = make_url(value)
    except (ArgumentError, ValueError, TypeError):
        # ``from None``: SQLAlchemy's message repeats the whole URL string.
        raise ConfigurationError(
            f"{field} is not a valid database URL; expected {_URL_FORM}"
        ) from None
    backend = url.get_backend_name()
    known = backend_for(backend)
    if known is None:
        raise ConfigurationError(
            f"{field} uses the unsupported database '{backend}'; supported: "
            + ", ".join(sorted(BACKENDS))
        )
    accepted = known.sync_drivers if sync else known.async_drivers
    suggested = known.sync_default if sync else known.async_default
    try:
        # Loads SQLAlchemy's dialect module, not the driver: a misspelt
        # driver ("pyscopg") is unknown here, not taken for a synchronous one.
        url.get_dialect()
        driver = url.get_driver_name()
    except Exception:
        raise ConfigurationError(
            f"{field} names an unknown driver '{url.drivername}'; "
            f"use {backend}+{suggested}"
        ) from None
    if driver not in accepted:
        needs = (
            f"the driver '{driver}'; SyncRouter needs a synchronous driver"
            if sync
            else f"the synchronous driver '{driver}'; routing_db needs an "
            "asyncio driver"
        )
        listed = ", ".join(f"{backend}+{d}" for d in sorted(accepted))
        raise ConfigurationError(
            f"{field} uses '{url.drivername}', which resolves to {needs}: use "
            f"{backend}+{suggested}:// (accepted: {listed})"
            + ("; Router takes the asyncio drivers" if sync else "")
        )
    return url


@overload
def create_engine(
    url: URL,
    *,
    field: str,
    pgbouncer: bool = ...,
    sync: Literal[False] = ...,
    **kwargs: Any,
) -> AsyncEngine: ...


@overload
def create_engine(
    url: URL, *, field: str, pgbouncer: bool = ..., sync: Literal[True], **kwargs: Any
) -> Engine: ...


@overload
def create_engine(
    url: URL, *, field: str, pgbouncer: bool = ..., sync: bool, **kwargs: Any
) -> AppEngine: ...


def create_engine(
    url: URL, *, field: str, pgbouncer: bool = False, sync: bool = False, **kwargs: Any
) -> AppEngine:
    """``create_async_engine`` (``sync``: ``create_engine``) with errors that
    name the setting, not the password.

    ``pgbouncer``: adjusted for PgBouncer's transaction pooling first.
    """
    if pgbouncer:
        url, kwargs = behind_pgbouncer(url, kwargs)
    try:
        if sync:
            return sqlalchemy.create_engine(url, **kwargs)
        return create_async_engine(url, **kwargs)
    except ModuleNotFoundError as exc:
        driver = url.get_driver_name()
        known = backend_for(url.get_backend_name())
        package = driver if known is None else known.packages.get(driver, driver)
        raise ConfigurationError(
            f"{field} needs the driver '{driver}', which is not installed "
            f"(pip install {package}): {exc.name} is missing"
        ) from None
    except (ArgumentError, TypeError) as exc:
        raise ConfigurationError(f"{field}: {exc}") from None


def behind_pgbouncer(url: URL, kwargs: dict[str, Any]) -> tuple[URL, dict[str, Any]]:
    """``url`` and engine ``kwargs`` for a PgBouncer in transaction pooling mode
    (PgBouncer >= 1.21 with ``max_prepared_statements`` makes this unnecessary)."""
    known = backend_for(url.get_backend_name())
    if known is None:
        known = BACKENDS["sqlite"]  # refuses, naming the URL's driver
    return known.behind_pgbouncer(url, kwargs)


def pool_capacity(pool: Any) -> int:
    """``pool_size + max_overflow`` of a queue pool; 0 when it has no such limit."""
    size = getattr(pool, "size", None)
    if not callable(size):
        return 0
    return int(size()) + max(max_overflow(pool), 0)


def engine_name(engine: AppEngine) -> str:
    """An engine's label: its ``logging_name`` if given, else ``host:port/db``."""
    # logging_name is SQLAlchemy's own name for an engine (create_engine's
    # argument, also in its log lines), so a name is given where engines are.
    given: str | None = core(engine).logging_name
    return given if given else url_name(engine.url)


def url_name(url: URL) -> str:
    """A label for a URL, ``host:port/database``, never with a password."""
    if url.get_backend_name() == "sqlite":
        return f"sqlite:{url.database or ':memory:'}"
    return f"{url.host or 'localhost'}:{url.port or ''}/{url.database or ''}"
