"""The routing decision: a pure function of statement kind, flags and state.

No I/O, no engines. The rule numbers are those of the design's routing table.
"""

from __future__ import annotations

import enum
from typing import Literal

from ._classify import Kind
from ._context import Scope
from ._exceptions import ConfigurationError

__all__ = ["DefaultRole", "RoleOption", "Route", "check_default_role", "decide"]

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


def decide(
    kind: Kind,
    *,
    scope: Scope,
    option: RoleOption,
    default_role: DefaultRole,
    wrote: bool,
) -> Route:
    """Return where a statement of ``kind`` goes under the given flags and state."""
    # 1. An explicit request for the writer always wins.
    if scope is Scope.WRITER or option == "writer":
        return Route.WRITER
    # 2. Writes go to the writer, or are refused before anything is sent.
    if kind is Kind.WRITE:
        return Route.REFUSE if scope is Scope.READ_ONLY else Route.WRITER
    # 3. Once this transaction wrote, its reads must see its uncommitted rows.
    if wrote:
        return Route.WRITER
    # 4. Replica reads. A bare connection request is unknown work, so it only
    # goes to a replica when the caller declared read_only (the replica's
    # read-only transaction then rejects any write made on it).
    if scope is Scope.READ_ONLY:
        return Route.REPLICA
    if kind is Kind.READ and (default_role == "auto" or option == "replica"):
        return Route.REPLICA
    # 5. Otherwise a RoutingSession is a plain session on the writer.
    return Route.WRITER
