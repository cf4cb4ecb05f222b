"""A session's side of a failover: is the writer still the primary; wait for one."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from sqlalchemy.orm import Session

from ._connections import checkout_failed
from ._engines import WriterIsAStandby
from ._exceptions import NoWriterAvailable
from ._positions import takes_writes_now
from ._retry import is_read_only_rejection
from ._sa_compat import pause

if TYPE_CHECKING:
    from ._recovery import RoutedTransaction
    from ._router_base import RouterBase

__all__ = ["WriterWaiting"]

logger = logging.getLogger("routing_db")


class WriterWaiting(Session):
    """Finds out that the writer is not the primary, and waits for it to be."""

    # Set on the sessions a router routes (the base of every routing session).
    _routing_router: RouterBase[Any] | None = None
    # This root transaction's routing state (None until something is worth
    # remembering; dropped in after_transaction_end).
    _routing_tx: RoutedTransaction | None = None

    def _routing_writer_refused(self, error: BaseException) -> bool:
        """Did the writer refuse a write because it is not the primary any more?"""
        router = self._routing_router
        tx = self._routing_tx
        if router is None or (tx is not None and tx.target is not None):
            return False  # not the writer's error
        if not is_read_only_rejection(error):
            return False
        topology = router.topology
        discovery = topology.discovery
        if discovery is not None:
            # Ask every node now; the same primary, still taking writes,
            # means a read-only transaction of the application's own.
            primary = discovery.primary
            discovery.check_now()
            return not (topology.writer_ok and discovery.primary is primary)
        if topology.writer_ok:
            try:
                takes = takes_writes_now(topology.writer)
            except WriterIsAStandby:
                takes = False  # a new connection found it a standby
            except Exception:  # unknown: the error stands as it is
                return False
            if takes:
                return False  # a read-only transaction of the application's own
            topology.writer_lost()
            # Its pooled connections go to a server that is not the primary.
            topology.writer.dispose()
        return True

    def _routing_writer_back(self, error: BaseException) -> bool:
        """After a connection to a cluster's writer could not be had: is the
        writer gone (a failover)? Then wait for the next one and say so."""
        router = self._routing_router
        if router is None:
            return False
        if router.topology.discovery is None:
            if not isinstance(error, WriterIsAStandby):
                return False  # a static writer: the retry policy tries it again
            # Its URL reached a standby: wait until it reaches the primary.
            self._routing_wait_for_writer()
            return True
        if not (checkout_failed(error) or isinstance(error, NoWriterAvailable)):
            return False
        router.topology.discovery.check_now()
        if router.topology.writer_ok:
            return False  # still the writer: a busy pool, or a blip
        self._routing_wait_for_writer()
        return True

    def _routing_writer_now(self) -> bool:
        """Ask whether the writer takes writes now (every node, for a cluster)."""
        router = self._routing_router
        assert router is not None
        topology = router.topology
        if topology.discovery is not None:
            topology.discovery.check_now()
        elif takes_writes_now(topology.writer):
            topology.writer_found()
        return topology.writer_ok

    def _routing_wait_for_writer(self) -> None:
        """Return once the writer takes writes; ``NoWriterAvailable`` after
        ``writer_wait_timeout``."""
        router = self._routing_router
        assert router is not None
        topology = router.topology
        deadline = time.monotonic() + router.health.writer_wait_timeout
        while not topology.writer_ok:
            # Asked here too, so that a router without a running monitor
            # finds the primary back.
            try:
                if self._routing_writer_now():
                    return
            except Exception as exc:  # down or restarting: ask again
                logger.debug("routing_db: writer role unknown: %r", exc)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                timeout = router.health.writer_wait_timeout
                raise self._routing_no_writer(
                    f"no writer within writer_wait_timeout, {timeout:g} s"
                )
            pause(min(0.1, remaining))

    def _routing_no_writer(self, why: str) -> NoWriterAvailable:
        router = self._routing_router
        assert router is not None
        topology = router.topology
        if topology.discovery is not None:
            what = topology.discovery.describe()
        else:
            what = f"{topology.name(router.writer)} is not the primary"
        return NoWriterAvailable(
            f"no writer: {what} ({why}); a failover may be under way"
        )
