"""Read/write routing sessions for SQLAlchemy 2: asyncio and sync."""

from ._causal.floor import (
    adopt_token,
    causal_token,
    current_causal_token,
    newest_token,
)
from ._causal.store import CausalStore, causal_key
from ._decide.context import read_only, use_writer
from ._events import RoutingListener
from ._exceptions import (
    CommitOutcomeUnknown,
    ConfigurationError,
    NoReplicaAvailable,
    NoWriterAvailable,
    ReadOnlyViolation,
    ReplicaReadTimeout,
    RoutingDBError,
    RoutingDBWarning,
)
from ._options import ConsistencyOptions, HealthOptions, ObservabilityOptions
from ._replicas.policies import (
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
from ._router.check import ServerProblem
from ._router.router import Router
from ._router.sync_router import SyncRouter
from ._session.async_session import RoutingSession, routing_sessionmaker
from ._session.makers import routing_sync_sessionmaker
from ._session.sync_session import RoutingSyncSession
from ._session.unit_of_work import run_unit_of_work, unit_of_work
from ._settings import RoutingSettings, SyncRoutingSettings
from .loadtest import LoadProcessError

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
    "ServerProblem",
    "SyncRouter",
    "SyncRoutingSettings",
    "Weighted",
    "adopt_token",
    "causal_key",
    "causal_token",
    "current_causal_token",
    "is_connection_error",
    "is_recovery_conflict",
    "is_transient_error",
    "newest_token",
    "read_only",
    "routing_sessionmaker",
    "routing_sync_sessionmaker",
    "run_unit_of_work",
    "unit_of_work",
    "use_writer",
]
