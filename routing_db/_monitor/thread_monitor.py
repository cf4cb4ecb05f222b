"""The sync face's monitor: the same rounds as ``Monitor``, on a daemon thread.

Each check runs on a worker thread and is waited for up to ``check_timeout``:
a server that hangs is judged failed then, and the check's connection is
cut so that its worker is free again. A server whose last check still waits
(connecting: libpq's connect_timeout bounds it) is not checked again until
that one ends, so a hung host holds at most one worker.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from typing import Any, TypeVar

from sqlalchemy.engine import Connection, Engine

from .._backends.backend import ReplicaStatus
from .._backends.positions import takes_writes, writer_position
from .._bounds.connect import submit_check
from .._topology.discovery import ThreadDiscovery
from .._topology.topology import Topology
from .rounds import Rounds

__all__ = ["ThreadMonitor"]

logger = logging.getLogger("routing_db")
T = TypeVar("T")
# At most one check per server waits at a time (see above): this is room for
# a writer's two and a dozen replicas' at once.
_WORKERS = 16


class ThreadMonitor(Rounds):
    """Polls every replica each ``interval`` seconds on a daemon thread."""

    def __init__(self, topology: Topology, **schedule: Any) -> None:
        super().__init__(topology, **schedule)
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._lock = threading.Lock()  # one round at a time (poll() and thread)
        self._workers: ThreadPoolExecutor | None = None
        # Per server, its last check and how to give up on it.
        self._waiting: dict[Engine, tuple[Future[Any], Callable[[], None]]] = {}

    @property
    def running(self) -> bool:
        """Is the polling thread alive?"""
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Start polling (idempotent)."""
        if self.running:
            return
        self._stopping = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(self._stopping,), name="routing_db monitor",
            daemon=True,
        )  # fmt: skip
        self._thread.start()

    def stop(self) -> None:
        """Stop polling and wait for the thread to end (a round in flight ends
        within ``check_timeout``)."""
        thread, self._thread = self._thread, None
        self._stopping.set()
        if thread is not None and thread is not threading.current_thread():
            thread.join()
        workers, self._workers = self._workers, None
        if workers is not None:
            # A check still waiting on a hung host has its connection cut, so
            # its thread ends now; one still connecting ends at its connect
            # timeout (a blocking connect cannot be interrupted).
            for future, give_up in list(self._waiting.values()):
                if not future.done():
                    give_up()
            workers.shutdown(wait=False, cancel_futures=True)

    def poll_once(self) -> None:
        """One round: the writer's role and position, then every replica due."""
        with self._lock:
            if self._workers is None:
                self._workers = ThreadPoolExecutor(
                    max_workers=_WORKERS, thread_name_prefix="routing_db check"
                )
            self._round(self._workers)

    def _round(self, workers: ThreadPoolExecutor) -> None:
        topology, policy = self._topology, self._policy
        if topology.discovery is not None:
            # Every node's role first, each bounded: nothing here waits for
            # a writer that may be gone.
            discovery = topology.discovery
            assert isinstance(discovery, ThreadDiscovery), "a SyncRouter's"
            discovery.check()
            writer_known = topology.writer_ok
        else:
            writer_known = policy.positions and self._writer_takes_writes(workers)
        writer_lsn: int | None = None
        if policy.positions and writer_known:
            try:
                asked_at = time.monotonic()
                writer_lsn = self._check(workers, topology.writer, writer_position)
                policy.writer_seen(writer_lsn, asked_at)
            except Exception as exc:  # the writer's health is not ours to judge
                logger.debug("monitor: writer position unavailable: %r", exc)
        pending = {}
        for engine in policy.due():
            try:
                future = self._submit(workers, engine, policy.replica_check, writer_lsn)
            except TimeoutError as exc:
                policy.polled(engine, exc, writer_lsn)
            else:
                pending[future] = engine
        # Each answer is recorded as it comes: not after a hung replica's.
        try:
            for future in as_completed(pending, timeout=self._check_timeout):
                self._record(pending.pop(future), future, writer_lsn)
        except TimeoutError:
            for engine in pending.values():
                self._give_up(engine)
                policy.polled(engine, TimeoutError("no answer in time"), writer_lsn)

    def _submit(
        self,
        workers: ThreadPoolExecutor,
        engine: Engine,
        check: Callable[..., T],
        *args: Any,
    ) -> Future[T]:
        waiting = self._waiting.get(engine)
        if waiting is not None and not waiting[0].done():
            raise TimeoutError("its last check still waits for an answer")
        self._waiting[engine] = submit_check(workers, engine, check, *args)
        return self._waiting[engine][0]

    def _give_up(self, engine: Engine) -> None:
        waiting = self._waiting.get(engine)
        if waiting is not None:
            waiting[1]()

    def _record(self, engine: Engine, future: Future[Any], lsn: int | None) -> None:
        answer: ReplicaStatus | Exception
        try:
            answer = future.result()
        except Exception as exc:
            answer = exc
        self._policy.polled(engine, answer, lsn)

    def _writer_takes_writes(self, workers: ThreadPoolExecutor) -> bool:
        topology = self._topology
        try:
            takes = self._check(workers, topology.writer, takes_writes)
        except Exception as exc:  # down or restarting: no verdict on its role
            logger.debug("monitor: writer role unknown: %r", exc)
            return False
        if self._policy.writer_answered(takes):
            topology.writer.dispose()
        return bool(takes)

    def _check(
        self,
        workers: ThreadPoolExecutor,
        engine: Engine,
        check: Callable[[Connection], T],
    ) -> T:
        future = self._submit(workers, engine, check)
        try:
            return future.result(timeout=self._check_timeout)
        except TimeoutError:
            self._give_up(engine)
            raise

    def _run(self, stopping: threading.Event) -> None:
        while not stopping.is_set():
            try:
                self.poll_once()
                if self._after_round is not None:
                    self._after_round()
            except Exception:  # pragma: no cover - a bug must not end the loop
                logger.exception("monitor: poll failed")
            stopping.wait(self._interval)
