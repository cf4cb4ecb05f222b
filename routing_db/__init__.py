"""Read/write routing sessions for SQLAlchemy 2 asyncio."""

from ._context import read_only, use_writer
from ._exceptions import (
    ConfigurationError,
    NoReplicaAvailable,
    ReadOnlyViolation,
    RoutingDBError,
)
from ._router import Router
from ._session import RoutingSession, RoutingSyncSession, routing_sessionmaker
from ._settings import RoutingSettings

__all__ = [
    "ConfigurationError",
    "NoReplicaAvailable",
    "ReadOnlyViolation",
    "Router",
    "RoutingDBError",
    "RoutingSession",
    "RoutingSettings",
    "RoutingSyncSession",
    "read_only",
    "routing_sessionmaker",
    "use_writer",
]
