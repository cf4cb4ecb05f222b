"""Errors routing_db raises itself.

    Exception
    └── RoutingDBError
        ├── ConfigurationError        (also ValueError)
        ├── ReadOnlyViolation         (also sqlalchemy.exc.InvalidRequestError)
        └── NoReplicaAvailable        (also ConnectionError)

Driver and SQLAlchemy errors pass through unchanged unless routing_db adds
meaning to them (a replica rejecting a write with SQLSTATE 25006 becomes
``ReadOnlyViolation``, chained to the driver error).
"""

from __future__ import annotations

from sqlalchemy.exc import InvalidRequestError

__all__ = [
    "ConfigurationError",
    "NoReplicaAvailable",
    "ReadOnlyViolation",
    "RoutingDBError",
]


class RoutingDBError(Exception):
    """Base of every error routing_db raises itself."""


class ConfigurationError(RoutingDBError, ValueError):
    """Bad settings or arguments; the message never contains a password."""


class ReadOnlyViolation(RoutingDBError, InvalidRequestError):
    """A write was attempted inside a ``read_only`` scope."""


class NoReplicaAvailable(RoutingDBError, ConnectionError):
    """A replica read found no eligible replica and writer fallback is off."""
