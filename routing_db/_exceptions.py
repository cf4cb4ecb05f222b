"""Errors routing_db raises itself.

    Exception
    └── RoutingDBError
        ├── ConfigurationError        (also ValueError)
        │   └── NotAStandby           (internal: a replica URL reached a primary)
        ├── ReplicaEjected            (internal, also ConnectionError)
        ├── ReadOnlyViolation         (also sqlalchemy.exc.InvalidRequestError)
        ├── NoReplicaAvailable        (also ConnectionError)
        ├── NoWriterAvailable         (also ConnectionError)
        │   └── WriterIsAStandby      (internal: the writer URL reached a standby)
        ├── CommitOutcomeUnknown      (also sqlalchemy.exc.DBAPIError)
        ├── ReplicaReadTimeout        (also sqlalchemy.exc.OperationalError)
        └── LoadProcessError          (also RuntimeError; routing_db.loadtest's)

    UserWarning
    └── RoutingDBWarning              (misuse routing_db can see)

Driver and SQLAlchemy errors pass through unchanged unless routing_db adds
meaning to them (a replica rejecting a write with SQLSTATE 25006 becomes
``ReadOnlyViolation``, chained to the driver error; the writer rejecting one
so, because it is not the primary any more, ``NoWriterAvailable``; a COMMIT
on the writer that loses its connection becomes ``CommitOutcomeUnknown``).
The internal leaves are handled inside routing_db (the read runs elsewhere);
should one ever reach the caller, it is still a ``RoutingDBError``.
"""

from __future__ import annotations

from sqlalchemy.exc import DBAPIError, InvalidRequestError, OperationalError

__all__ = [
    "CommitOutcomeUnknown",
    "ConfigurationError",
    "NoReplicaAvailable",
    "NoWriterAvailable",
    "ReadOnlyViolation",
    "ReplicaReadTimeout",
    "RoutingDBError",
    "RoutingDBWarning",
    "missing_extra",
]


class RoutingDBError(Exception):
    """Base of every error routing_db raises itself."""


class ConfigurationError(RoutingDBError, ValueError):
    """Bad settings or arguments; the message never contains a password."""


def missing_extra(feature: str, package: str, extra: str) -> ConfigurationError:
    """The error for ``feature`` used without ``package``, its optional extra."""
    return ConfigurationError(
        f"{feature} needs {package}: pip install 'routing_db[{extra}]'"
    )


class ReadOnlyViolation(RoutingDBError, InvalidRequestError):
    """A write was attempted inside a ``read_only`` scope."""


class NoReplicaAvailable(RoutingDBError, ConnectionError):
    """A replica read found no eligible replica and writer fallback is off."""


class NoWriterAvailable(RoutingDBError, ConnectionError):
    """No writer took the work within ``writer_wait_timeout`` (a failover is
    under way, or the writer's server is not the primary any more)."""


class CommitOutcomeUnknown(RoutingDBError, DBAPIError):
    """The connection was lost during COMMIT: the transaction may or may not be
    committed. It is never retried automatically; check before writing again."""


class ReplicaReadTimeout(RoutingDBError, OperationalError):
    """A replica statement ran past ``replica_read_timeout``; its connection
    was discarded, so ``unit_of_work`` runs the transaction again."""


class RoutingDBWarning(UserWarning):
    """Misuse routing_db can see, such as routers created over and over."""
