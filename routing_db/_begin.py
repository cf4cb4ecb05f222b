"""``begin()`` blocks of both faces: a replica's read ends before the rollback.

A ``begin()`` block that fails, or ``rollback()`` called on its transaction,
rolls back through the transaction object, not the session's ``rollback()``:
the replica is ended there first, so that a dead one can neither mask the
application's error nor keep the writer's rollback from running. A block that
ends well commits, inside ``committing()`` like ``commit()``.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncSessionTransaction
from sqlalchemy.orm import Session

from ._context import committing
from ._recovery import RecoveringSession

__all__ = ["ReplicaFirst", "RoutingSessionTransaction"]


def _end_replica(session: Session) -> None:
    if isinstance(session, RecoveringSession):
        session._routing_end_replica()


class RoutingSessionTransaction(AsyncSessionTransaction):
    """``AsyncSessionTransaction`` whose rollback ends a replica's read first."""

    async def commit(self) -> None:
        """Commit; a lost COMMIT is ``CommitOutcomeUnknown``."""
        with committing():
            await super().commit()

    async def rollback(self) -> None:
        """Roll back; a replica connection that died is dropped, not raised."""
        try:
            await self.session.run_sync(_end_replica)
        finally:
            await super().rollback()

    async def __aexit__(self, type_: Any, value: Any, traceback: Any) -> None:
        if type_ is None:
            with committing():  # the block ended well: this commits
                await super().__aexit__(type_, value, traceback)
            return
        try:
            await self.session.run_sync(_end_replica)
        finally:
            await super().__aexit__(type_, value, traceback)


class ReplicaFirst:
    """A ``SessionTransaction`` (sync face) whose rollback ends a replica's read
    first, as ``RoutingSessionTransaction`` does on asyncio."""

    def __init__(self, session: RecoveringSession, transaction: Any) -> None:
        self._session = session
        self._inner = transaction

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def rollback(self, _to_root: bool = False) -> None:
        """Roll back; a replica connection that died is dropped, not raised."""
        try:
            self._session._routing_end_replica()
        finally:
            self._inner.rollback(_to_root)

    def __enter__(self) -> ReplicaFirst:
        self._inner.__enter__()
        return self

    def __exit__(self, type_: Any, value: Any, traceback: Any) -> None:
        if type_ is not None:
            try:
                self._session._routing_end_replica()
            finally:
                self._inner.__exit__(type_, value, traceback)
            return
        with committing():  # the block ended well: this commits
            self._inner.__exit__(type_, value, traceback)
