"""SQLite (aiosqlite, pysqlite): no replication, for the zero-setup demo and
tests. A "replica" is a read-only handle on the same file."""

from __future__ import annotations

from typing import Any

from .backend import Backend, Found

__all__ = ["SQLite"]


class SQLite(Backend):
    """SQLite: no network, no standbys, no positions."""

    name = "sqlite"
    async_drivers = frozenset({"aiosqlite"})
    async_default = "aiosqlite"
    sync_drivers = frozenset({"pysqlite"})
    sync_default = "pysqlite"

    def setup_replica(self, cursor: Any) -> Found:
        cursor.execute("PRAGMA query_only = ON")
        return Found(True, None, None)
