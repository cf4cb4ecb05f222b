"""Read/write routing sessions for SQLAlchemy 2: asyncio and sync."""

from ._async_session import RoutingSession, routing_sessionmaker
from ._causal import causal_token, current_causal_token
from ._context import read_only, use_writer
from ._events import RoutingListener
from ._exceptions import (
    CommitOutcomeUnknown,
    ConfigurationError,
    LoadProcessError,
    NoReplicaAvailable,
    NoWriterAvailable,
    ReadOnlyViolation,
    ReplicaReadTimeout,
    RoutingDBError,
)
from ._misuse import RoutingDBWarning
from ._options import ConsistencyOptions, HealthOptions, ObservabilityOptions
from ._policies import (
    BalancingPolicy,
    Candidate,
    LeastBusy,
    RandomChoice,
    RoundRobin,
    Weighted,
)
from ._retry import (
    RetryPolicy,
    is_connection_error,
    is_recovery_conflict,
    is_transient_error,
)
from ._router import Router
from ._session import RoutingSyncSession
from ._settings import RoutingSettings, SyncRoutingSettings
from ._shared_floor import CausalStore, causal_key
from ._sync_router import SyncRouter
from ._sync_session import routing_sync_sessionmaker
from ._unit_of_work import run_unit_of_work, unit_of_work

__all__ = [
    "BalancingPolicy",
    "Candidate",
    "CausalStore",
    "CommitOutcomeUnknown",
    "ConfigurationError",
    "ConsistencyOptions",
    "HealthOptions",
    "LeastBusy",
    "LoadProcessError",
    "NoReplicaAvailable",
    "NoWriterAvailable",
    "ObservabilityOptions",
    "RandomChoice",
    "ReadOnlyViolation",
    "ReplicaReadTimeout",
    "RetryPolicy",
    "RoundRobin",
    "Router",
    "RoutingDBError",
    "RoutingDBWarning",
    "RoutingListener",
    "RoutingSession",
    "RoutingSettings",
    "RoutingSyncSession",
    "SyncRouter",
    "SyncRoutingSettings",
    "Weighted",
    "causal_key",
    "causal_token",
    "current_causal_token",
    "is_connection_error",
    "is_recovery_conflict",
    "is_transient_error",
    "read_only",
    "routing_sessionmaker",
    "routing_sync_sessionmaker",
    "run_unit_of_work",
    "unit_of_work",
    "use_writer",
]
