"""The background monitor: replica lag polling and probes of ejected replicas."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncEngine

from .._backends.backend import ReplicaStatus
from .._backends.positions import takes_writes, writer_position
from .._bounds.connect import MONITOR_PROBING, checked_within
from .._engines.make import dispose
from .._topology.discovery import AsyncDiscovery
from .rounds import Rounds

__all__ = ["Monitor"]

logger = logging.getLogger("routing_db")
T = TypeVar("T")

# How long stop() lets a round in flight finish before it cancels it. A
# round's checks take moments; one cancelled while its connection is being
# made can leave that connection half made (aiosqlite under SQLAlchemy 2.0
# then never closes it, and asyncio.run() never ends). A check on a host
# that hangs is still cancelled, within this.
_STOP_GRACE = 0.5


class Monitor(Rounds):
    """Polls every replica each ``interval`` seconds while it runs (asyncio)."""

    _task: asyncio.Task[None] | None = None
    _in_round = False

    @property
    def running(self) -> bool:
        """Is the polling task alive?"""
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        """Start polling (idempotent); needs a running event loop."""
        if not self.running:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name="routing_db monitor"
            )

    async def stop(self) -> None:
        """Stop polling and wait for the task to end."""
        task, self._task = self._task, None
        if task is not None:
            if self._in_round:  # it ends after this round: let it, briefly
                done, _ = await asyncio.wait({task}, timeout=_STOP_GRACE)
                if done:
                    return
            task.cancel()
            # asyncio.wait neither raises the task's CancelledError nor
            # absorbs one sent to our caller (awaiting the task under
            # suppress(CancelledError) would do both).
            await asyncio.wait({task})

    async def poll_once(self) -> None:
        """One round: the writer's role and position, then every replica due."""
        # Its connections to an ejected replica are the probes that bring
        # it back (router.poll() too): reads open none.
        probing = MONITOR_PROBING.set(True)
        try:
            await self._round()
        finally:
            MONITOR_PROBING.reset(probing)

    async def _round(self) -> None:
        topology, policy = self._topology, self._policy
        if topology.discovery is not None:
            # Every node's role first, each bounded on its own connection:
            # nothing here waits for a writer that may be gone.
            discovery = topology.discovery
            assert isinstance(discovery, AsyncDiscovery), "a Router's"
            await discovery.check()
            writer_known = topology.writer_ok
        else:
            writer_known = policy.positions and await self._writer_takes_writes()
        writer_lsn: int | None = None
        if policy.positions and writer_known:
            try:
                asked_at = time.monotonic()
                writer_lsn = await self._check(topology.writer, writer_position)
                policy.writer_seen(writer_lsn, asked_at)
            except Exception as exc:  # the writer's health is not ours to judge
                logger.debug("monitor: writer position unavailable: %r", exc)
        await asyncio.gather(*(self._poll(e, writer_lsn) for e in policy.due()))

    async def _poll(self, engine: Engine, writer_lsn: int | None) -> None:
        # Each answer is recorded as it comes: not after a hung replica's.
        policy = self._policy
        answer: ReplicaStatus | Exception
        try:
            answer = await self._check(engine, policy.replica_check, writer_lsn)
        except Exception as exc:
            answer = exc
        policy.polled(engine, answer, writer_lsn)

    async def _writer_takes_writes(self) -> bool:
        topology = self._topology
        try:
            takes = await self._check(topology.writer, takes_writes)
        except Exception as exc:  # down or restarting: no verdict on its role
            logger.debug("monitor: writer role unknown: %r", exc)
            return False
        if self._policy.writer_answered(takes):
            await dispose(topology.app_writer)
        return bool(takes)

    async def _check(self, engine: Engine, check: Callable[..., T], *args: Any) -> T:
        """``check(connection, *args)`` on a new connection of ``engine``, bounded."""
        app = self._topology.app_engine(engine)
        assert isinstance(app, AsyncEngine), "the asyncio monitor of a Router"
        return await checked_within(app, check, *args, seconds=self._check_timeout)

    async def _run(self) -> None:
        # Also ends once stop() has let go of this task: on Python 3.11,
        # asyncio.wait_for (in _bounded) can swallow the cancellation that
        # stop() sends (cpython#86296), and stop() would then wait forever.
        while asyncio.current_task() is self._task:
            self._in_round = True
            try:
                await self.poll_once()
                if self._after_round is not None:
                    self._after_round()
            except Exception:  # pragma: no cover - a bug must not end the loop
                logger.exception("monitor: poll failed")
            finally:
                self._in_round = False
            if asyncio.current_task() is not self._task:
                break  # stop() is waiting for this round to end
            await asyncio.sleep(self._interval)
