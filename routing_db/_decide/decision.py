"""The routing decision: a pure function of statement kind, flags and state.

No I/O, no engines. The rule numbers are those of the design's routing table.
"""

from __future__ import annotations

import enum
from typing import Literal

from .._exceptions import ConfigurationError
from .classify import Kind
from .context import Scope

__all__ = [
    "DefaultRole",
    "RoleOption",
    "Route",
    "check_default_role",
    "decide",
    "decide_why",
]

DefaultRole = Literal["writer", "auto"]
RoleOption = Literal["writer", "replica"] | None


def check_default_role(default_role: object) -> None:
    """Raise ``ConfigurationError`` unless ``default_role`` is writer or auto."""
    if default_role not in ("writer", "auto"):
        raise ConfigurationError(
            f"default_role must be 'writer' or 'auto', got {default_role!r}"
        )


class Route(enum.Enum):
    """Where a statement goes, or that it must be refused."""

    WRITER = "writer"
    REPLICA = "replica"
    REFUSE = "refuse"  # a write inside read_only: raise, send nothing


# Enum members as module names: reading one through its class goes through
# the enum metaclass, and the decision runs for every statement.
_WRITER, _REPLICA, _REFUSE = Route.WRITER, Route.REPLICA, Route.REFUSE
_USE_WRITER, _READ_ONLY = Scope.WRITER, Scope.READ_ONLY
_READ, _WRITE = Kind.READ, Kind.WRITE


def decide(
    kind: Kind,
    *,
    scope: Scope,
    option: RoleOption,
    default_role: DefaultRole,
    wrote: bool,
) -> Route:
    """Return where a statement of ``kind`` goes under the given flags and state."""
    return decide_why(
        kind, scope=scope, option=option, default_role=default_role, wrote=wrote
    )[0]


def decide_why(
    kind: Kind,
    *,
    scope: Scope,
    option: RoleOption,
    default_role: DefaultRole,
    wrote: bool,
) -> tuple[Route, str]:
    """``decide``, with the reason (a metric label) for the route."""
    # 1. An explicit request for the writer always wins.
    if scope is _USE_WRITER:
        return _WRITER, "use_writer"
    if option == "writer":
        return _WRITER, "option"
    # 2. Writes go to the writer, or are refused before anything is sent.
    if kind is _WRITE:
        return (_REFUSE if scope is _READ_ONLY else _WRITER), "write"
    # 3. Once this transaction wrote, its reads must see its uncommitted rows.
    if wrote:
        return _WRITER, "wrote"
    # 4. Replica reads. A bare connection request is unknown work, so it only
    # goes to a replica when the caller declared read_only (the replica's
    # read-only transaction then rejects any write made on it).
    if scope is _READ_ONLY:
        return _REPLICA, "read_only"
    if kind is _READ and option == "replica":
        return _REPLICA, "option"
    if kind is _READ and default_role == "auto":
        return _REPLICA, "auto"
    # 5. Otherwise a RoutingSession is a plain session on the writer.
    return _WRITER, "default"
