"""A cluster's writer, found by asking every node its role (``from_cluster``).

Every node has a reader engine (a replica of the router's replica set) and a
one-connection probe engine of its own: role checks never queue behind reads
or writes. The router's writer engine is one pool whose new connections go to
the node found to be the primary (SQLAlchemy's ``do_connect`` event); when the
primary moves, that pool is emptied and its connections to the former
primary are cut.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
import time
import weakref
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from sqlalchemy.engine import URL, Engine
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.util import await_only, greenlet_spawn

from ._bounds import checked_within, install_connect_timeout, submit_check
from ._connections import cut, driver_of
from ._exceptions import ConfigurationError, NoWriterAvailable
from ._hooks import Hooks
from ._make import AppEngine, core
from ._positions import takes_writes
from ._sa_compat import pause
from ._topology import Topology

__all__ = ["ROLE_CHECK", "AsyncDiscovery", "Discovery", "Node", "ThreadDiscovery"]

logger = logging.getLogger("routing_db")

# Where a writer connection being made goes: do_connect tells connect.
_NODE = "routing_db_node"
# Seconds for a driver to see that its socket was cut (an event loop's turn).
_NOTICED = 0.05
# The name of the sync face's threads that ask a node its role.
ROLE_CHECK = "routing_db role check"


@dataclasses.dataclass(eq=False)
class Node:
    """One server of the cluster, as routing_db reaches it."""

    name: str
    reader: AppEngine  # its member of the replica set
    probe: AppEngine  # one connection, for role checks only
    # The writer pool's driver connections to it (weakly: closed ones go).
    writer_connections: weakref.WeakSet[Any] = dataclasses.field(
        default_factory=weakref.WeakSet
    )


class Discovery:
    """Which node takes writes, asked of every node; the writer pool follows it."""

    def __init__(
        self,
        topology: Topology,
        nodes: list[Node],
        *,
        bound: float,
        make_probe: Callable[[URL], AppEngine],
        connect_timeout: float | None,
    ) -> None:
        self._topology = topology
        self.nodes = nodes
        self._bound = bound
        self._make_probe = make_probe
        self._connect_timeout = connect_timeout
        self._hooks: Hooks | None = None
        self.primary: Node | None = None
        # Two or more nodes take writes (split brain): their names.
        self.candidates: tuple[str, ...] = ()
        writer = topology.app_writer
        # What the writer's connections are made with, less what its URL gave:
        # the shared connect_args stay, the node's URL supplies the rest.
        self._url_keys = set(writer.dialect.create_connect_args(writer.url)[1])

    def install(self, hooks: Hooks) -> None:
        """Point the writer engine's new connections at the primary; bound the
        probes' connects."""
        self._hooks = hooks
        hooks.listen(self._topology.writer, "do_connect", self._connect_to_primary)
        hooks.listen(self._topology.writer, "connect", self._connected)
        for node in self.nodes:
            self._bound_probe(node)

    def _bound_probe(self, node: Node) -> None:
        if self._hooks is not None and self._connect_timeout is not None:
            install_connect_timeout(node.probe, self._hooks, self._connect_timeout)

    def _connect_to_primary(
        self, dialect: Any, record: Any, cargs: list[Any], cparams: dict[str, Any]
    ) -> None:
        node = self.primary
        if node is None:
            raise NoWriterAvailable(f"no writer: {self.describe()}")
        args, params = dialect.create_connect_args(node.probe.url)
        cargs[:] = args
        for key in self._url_keys:
            cparams.pop(key, None)
        cparams.update(params)
        record.info[_NODE] = node

    @staticmethod
    def _connected(dbapi_connection: Any, record: Any) -> None:
        node: Node | None = record.info.pop(_NODE, None)
        if node is not None:
            node.writer_connections.add(driver_of(dbapi_connection))

    def add(self, name: str, reader: AppEngine) -> None:
        """Ask ``reader``'s node its role from the next check on."""
        node = Node(name, reader, self._make_probe(reader.url))
        self._bound_probe(node)
        self.nodes.append(node)

    def remove(self, name: str) -> AppEngine:
        """Stop asking node ``name``; return its probe engine (to dispose)."""
        node = next((node for node in self.nodes if node.name == name), None)
        if node is None:
            raise ConfigurationError(f"the router has no node named {name!r}")
        if node is self.primary:
            raise ConfigurationError(
                f"node {name} is the writer: it cannot be removed (fail over first)"
            )
        self.nodes.remove(node)
        return node.probe

    def describe(self) -> str:
        """Why there is no writer, for ``NoWriterAvailable``."""
        if self.candidates:
            return (
                f"{' and '.join(self.candidates)} take writes (split brain): "
                "writes are refused until one is left"
            )
        return "no node of the cluster takes writes"

    def owns(self, reader: AppEngine) -> bool:
        """Is ``reader`` the reader engine of the node that is the writer?"""
        return self.primary is not None and self.primary.reader is reader

    def check_now(self) -> None:
        """Ask every node its role now, from SQLAlchemy's sync layer."""
        raise NotImplementedError

    def _settle(self, nodes: list[Node], answers: list[bool | None]) -> None:
        """Act on the nodes' answers (``None``: no answer). Runs as sync code on
        either face: an asyncio router runs it in SQLAlchemy's greenlet."""
        replica_set = self._topology.replica_set
        for node, takes in zip(nodes, answers, strict=True):
            if takes is not None:
                replica_set.record_role(core(node.reader), standby=not takes)
        primaries = [node for node, takes in zip(nodes, answers, strict=True) if takes]
        current = self.primary
        if len(primaries) == 1:
            self._elect(primaries[0])
        elif primaries:
            names = tuple(node.name for node in primaries)
            if names != self.candidates:
                logger.error(
                    "routing_db: nodes %s take writes (split brain): writes "
                    "are refused, never sent to either",
                    ", ".join(names),
                )
            self.candidates = names
            self._lose(current, drop=True, quiet=True)
        else:
            self.candidates = ()
            # Dropped only when the primary says it is in recovery: a primary
            # that did not answer this time may still hold good connections.
            answered = current is not None and answers[nodes.index(current)] is False
            self._lose(current, drop=answered)

    def _elect(self, node: Node) -> None:
        topology, old = self._topology, self.primary
        self.candidates = ()
        if node is not old:
            self.primary = node
            topology.replica_set.forget_positions()
            # Every connection to a former primary is cut, in flight or idle
            # (after a split brain, or a primary found in recovery, ``old`` is
            # None, yet the writer may hold some). Once the drivers have seen
            # their sockets end, closing the idle ones writes nothing to a
            # host that may hang.
            if self._fence(node):
                pause(_NOTICED)
            if old is not None:
                topology.writer.dispose()
            topology.listeners.emit("role_changed", node.name, "replica", "writer")
            logger.warning("routing_db: node %s is the writer", node.name)
        topology.writer_found(node.name, quiet=node is not old)

    def _fence(self, primary: Node) -> int:
        """Cut the writer's connections to every node but ``primary``.

        A former primary that hangs (or sits behind a partition) would hold a
        write in flight there until the host answers again, or the kernel's
        TCP timeout, minutes later; it has been replaced, so whatever it
        would still commit is lost to the cluster anyway. Cut, the write fails
        at once as a lost connection: ``unit_of_work`` reruns it on the new
        primary, and a COMMIT in flight is ``CommitOutcomeUnknown``.
        """
        count = 0
        for node in self.nodes:
            if node is not primary:
                connections, node.writer_connections = (
                    node.writer_connections,
                    weakref.WeakSet(),
                )
                count += sum(cut(connection) for connection in connections)
        if count:
            logger.warning(
                "routing_db: %d writer connections to the former primary cut "
                "(a transaction in flight on one fails as a lost connection, "
                "which unit_of_work reruns)",
                count,
            )
        return count

    def _lose(self, current: Node | None, *, drop: bool, quiet: bool = False) -> None:
        """No writer now; with ``drop``, ``current`` is not the primary any more."""
        topology = self._topology
        if drop and current is not None:
            self.primary = None
            topology.writer.dispose()
        topology.writer_lost(None if current is None else current.name, quiet=quiet)


class AsyncDiscovery(Discovery):
    """``Discovery`` for ``Router``: the nodes are asked on the event loop."""

    _check: asyncio.Task[None] | None = None

    async def check(self) -> None:
        """Ask every node its role now; one check at a time, callers share it."""
        task = self._check
        if task is None or task.done():
            task = self._check = asyncio.get_running_loop().create_task(
                self._ask_all(), name="routing_db role check"
            )
        # shield: a caller that gives up (a cancelled request) does not cut
        # the check short for the others.
        await asyncio.shield(task)

    def check_now(self) -> None:
        """Ask every node its role now, from SQLAlchemy's sync layer."""
        await_only(self.check())

    async def _ask(self, node: Node) -> bool | None:
        probe = node.probe
        assert isinstance(probe, AsyncEngine)
        try:
            return await checked_within(probe, takes_writes, seconds=self._bound)
        except Exception as exc:  # down, hung or restarting: no verdict
            logger.debug("routing_db: role of %s unknown: %r", node.name, exc)
            return None

    async def _ask_all(self) -> None:
        nodes = list(self.nodes)
        answers = await asyncio.gather(*(self._ask(node) for node in nodes))
        await greenlet_spawn(self._settle, nodes, answers)


class ThreadDiscovery(Discovery):
    """``Discovery`` for ``SyncRouter``: the nodes are asked on threads."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._lock = threading.Lock()
        self._done = 0  # checks finished: a caller that waited shares the last

    def check(self) -> None:
        """Ask every node its role now; one check at a time, callers share it."""
        seen = self._done
        with self._lock:
            if self._done != seen:
                return  # one finished while this caller waited: it is news
            nodes = list(self.nodes)
            workers = ThreadPoolExecutor(
                max_workers=max(len(nodes), 1), thread_name_prefix=ROLE_CHECK
            )
            asked = [
                submit_check(workers, _probe(node), takes_writes) for node in nodes
            ]
            deadline = time.monotonic() + self._bound
            answers = [
                self._answer(node, *check, deadline)
                for node, check in zip(nodes, asked, strict=True)
            ]
            workers.shutdown(wait=False, cancel_futures=True)
            self._settle(nodes, answers)
            self._done += 1

    check_now = check

    def _answer(
        self,
        node: Node,
        asked: Future[bool],
        give_up: Callable[[], None],
        deadline: float,
    ) -> bool | None:
        try:
            return asked.result(timeout=max(deadline - time.monotonic(), 0.0))
        except Exception as exc:  # down, hung or restarting: no verdict
            if isinstance(exc, TimeoutError):
                give_up()  # its worker is free again
            logger.debug("routing_db: role of %s unknown: %r", node.name, exc)
            return None


def _probe(node: Node) -> Engine:
    assert isinstance(node.probe, Engine), "a SyncRouter's"
    return node.probe
