"""Client-side bounds on a server that does not answer (a hung or unreachable host).

A connection attempt to a host that accepts and never answers, or never
accepts, would otherwise wait for the driver's own default (asyncpg: 60 s)
or the kernel's TCP timeout.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from ._hooks import Hooks
from ._sa_compat import bounded_creator

__all__ = ["install_connect_timeout"]


def _asyncpg(seconds: float) -> dict[str, Any]:
    return {"timeout": seconds}  # the whole connect, startup included


def _libpq(seconds: float) -> dict[str, Any]:
    # libpq takes whole seconds, and treats less than 2 as 2.
    return {"connect_timeout": max(2, math.ceil(seconds))}


def _mysql(module: str) -> Callable[[float], dict[str, Any]]:
    # Their connect_timeout covers the TCP connect only: a host that accepts
    # and never sends its greeting would hold the connect for ever.
    def arguments(seconds: float) -> dict[str, Any]:
        connect = importlib.import_module(module).connect
        return {"connect_timeout": seconds, **bounded_creator(connect, seconds)}

    return arguments


_CONNECT_TIMEOUT: dict[str, Callable[[float], dict[str, Any]]] = {
    "asyncpg": _asyncpg,
    "psycopg": _libpq,
    "psycopg_async": _libpq,
    "aiomysql": _mysql("aiomysql"),
    "asyncmy": _mysql("asyncmy"),
}


def install_connect_timeout(engine: AsyncEngine, hooks: Hooks, seconds: float) -> None:
    """Bound each new connection of ``engine`` to ``seconds``, unless its
    ``connect_args`` (or URL) set the driver's own timeout already."""
    arguments = _CONNECT_TIMEOUT.get(engine.dialect.driver)
    if arguments is None:
        return  # SQLite: no network
    bound = arguments(seconds)

    def bounded(dialect: Any, record: Any, cargs: Any, cparams: dict[str, Any]) -> None:
        for key, value in bound.items():
            cparams.setdefault(key, value)

    hooks.listen(engine.sync_engine, "do_connect", bounded)
