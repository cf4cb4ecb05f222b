"""Which backend: of a dialect, or of a driver's connection."""

from __future__ import annotations

import weakref
from typing import Any

from .backend import Backend
from .mysql import MariaDB, MySQL
from .postgresql import PostgreSQL
from .sqlite import SQLite

__all__ = ["BACKENDS", "backend_for", "backend_of"]

BACKENDS: dict[str, Backend] = {
    backend.name: backend for backend in (PostgreSQL(), MySQL(), MariaDB(), SQLite())
}
# Of connections, in the order asked: each knows its own drivers'.
_NETWORKED = (BACKENDS["postgresql"], BACKENDS["mysql"])
_NONE = SQLite()
# Weakly: each engine with a read bound has connection classes of its own.
_BY_CLASS: weakref.WeakKeyDictionary[type, Backend] = weakref.WeakKeyDictionary()


def backend_for(dialect_name: str) -> Backend | None:
    """The backend of a SQLAlchemy dialect (None: not one routing_db supports)."""
    return BACKENDS.get(dialect_name)


def backend_of(driver_connection: Any) -> Backend:
    """The backend whose driver made ``driver_connection`` (SQLite's, whose
    connections have no socket, for any other)."""
    kind = type(driver_connection)
    backend = _BY_CLASS.get(kind)
    if backend is None:
        backend = next((b for b in _NETWORKED if b.owns(driver_connection)), _NONE)
        _BY_CLASS[kind] = backend
    return backend
