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
import contextlib
import dataclasses
import logging
import threading
import time
import weakref
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from typing import Any, Protocol

from sqlalchemy.engine import URL, Engine
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.util import await_only, greenlet_spawn

from .._backends.backend import Role
from .._backends.connections import cut, driver_of
from .._backends.positions import role_of
from .._bounds.connect import checked_within, install_connect_timeout, submit_check
from .._compat import pause
from .._engines.hooks import Hooks
from .._engines.make import AppEngine, core
from .._events import Listeners
from .._exceptions import ConfigurationError, NoWriterAvailable
from .._replicas.replica_set import ReplicaSet
from .patroni import PatroniSource, PatroniView

__all__ = [
    "ROLE_CHECK",
    "AsyncDiscovery",
    "Discovery",
    "Node",
    "Routed",
    "ThreadDiscovery",
]

logger = logging.getLogger("routing_db")

# Where a writer connection being made goes: do_connect tells connect.
_NODE = "routing_db_node"
# Seconds for a driver to see that its socket was cut (an event loop's turn).
_NOTICED = 0.05
# The name of the sync face's threads that ask a node its role.
ROLE_CHECK = "routing_db role check"
# An answer slower than this came from another moment than the others': it
# never makes a node the writer on its own (a node that hung may answer
# "primary" after another was promoted while it was stopped).
_LATE = 0.5
# Seconds for Patroni's REST API to answer (a member that hangs does not).
_REST_BOUND = 1.0
_NO_ANSWER: tuple[Role | None, bool] = (None, False)
# Once the verdict is clear, how long the nodes still to answer get: a node
# that hangs is not waited for, one that is merely slower still counts.
_GRACE = 0.25


class Routed(Protocol):
    """What discovery acts on: the router's topology (``Topology``), as far as
    a writer found among the nodes changes it."""

    app_writer: AppEngine
    writer: Engine
    replica_set: ReplicaSet
    listeners: Listeners

    def writer_found(self, name: str, *, quiet: bool = False) -> None: ...

    def writer_lost(self, name: str | None, *, quiet: bool = False) -> None: ...


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
        topology: Routed,
        nodes: list[Node],
        *,
        bound: float,
        make_probe: Callable[[URL], AppEngine],
        connect_timeout: float | None,
        patroni: list[str] | None = None,
        give_up_after: float | None = None,
    ) -> None:
        self._topology = topology
        self.nodes = nodes
        self._bound = bound
        self._late = min(_LATE, bound / 4)
        # Patroni's REST API of each member (empty: roles alone decide).
        self.patroni = (
            None
            if not patroni
            else PatroniSource(patroni, bound=min(_REST_BOUND, bound))
        )
        # The newest timeline a primary was seen on (None: not known, or no
        # timelines: MariaDB), and the nodes found on an older one.
        self.timeline: int | None = None
        self._superseded: set[str] = set()
        # The newest timeline each node was seen take writes on: a former
        # primary that is now in recovery may hold writes the cluster threw
        # away until it is shown to be on the current timeline.
        self._was_primary: dict[str, int] = {}
        # A writer that has not answered for this long is given up: its
        # connections are cut, so no write waits on a hung host for longer
        # than writers wait for a writer (writer_wait_timeout).
        self._give_up_after = give_up_after
        self._answered_at = time.monotonic()
        # Nodes that did not answer last round: not waited for again.
        self._silent: set[str] = set()
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

    def _connected(self, dbapi_connection: Any, record: Any) -> None:
        node: Node | None = record.info.pop(_NODE, None)
        if node is None:
            return
        # Added before the primary is read again: a fence that runs between
        # the two cuts it, and one that ran before is seen here.
        node.writer_connections.add(driver_of(dbapi_connection))
        if node is not self.primary:
            # The node was judged not to be the writer while this connection
            # was being opened: nothing is sent on it.
            with contextlib.suppress(Exception):
                dbapi_connection.close()
            raise NoWriterAvailable(
                f"no writer: {node.name} stopped being the writer while a "
                "connection to it was opened"
            )

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

    def _asked(self, view: PatroniView | None) -> list[Node]:
        """The nodes whose role is asked this round: with Patroni's verdict,
        only the leader it names (no other node is a candidate, whatever its
        backends say, and a node that hangs is not waited for); else all."""
        nodes = list(self.nodes)
        if view is None or not view.known:
            return nodes
        return [node for node in nodes if view.leads(self._member(node, view))]

    def _member(self, node: Node, view: PatroniView) -> Any:
        url = node.probe.url
        return view.member(url.host, url.port or 5432, node.name)

    def _settle(
        self,
        nodes: list[Node],
        answers: list[Role | None],
        late: list[bool],
        view: PatroniView | None = None,
    ) -> None:
        """Act on the nodes' answers (``None``: no answer; ``late``: slower
        than the others) and Patroni's verdict (``None``: not asked). Runs as
        sync code on either face: an asyncio router runs it in SQLAlchemy's
        greenlet."""
        replica_set = self._topology.replica_set
        self._silent = {
            node.name for node, role in zip(nodes, answers, strict=True) if role is None
        }
        for node, role in zip(nodes, answers, strict=True):
            if role is not None:
                replica_set.record_role(
                    core(node.reader), standby=not role.takes_writes
                )
        if view is not None and view.known:
            self._judge_readers(view)
        timelines = [
            role.timeline
            for role in answers
            if role is not None and role.takes_writes and role.timeline is not None
        ]
        if timelines:
            self.timeline = max(self.timeline or 0, *timelines)
        current = self.primary
        primaries = [
            node
            for node, role, slow in zip(nodes, answers, late, strict=True)
            if role is not None and role.takes_writes and (not slow or node is current)
        ]
        if view is not None and view.known:
            # A node its HA manager does not hold as leader is not the writer.
            primaries = [
                node for node in primaries if view.leads(self._member(node, view))
            ]
        if len(primaries) == 1 and not self._is_superseded(
            primaries[0], answers[nodes.index(primaries[0])]
        ):
            self._elect(primaries[0])
        elif len(primaries) > 1:
            names = tuple(node.name for node in primaries)
            if names != self.candidates:
                logger.error(
                    "nodes %s take writes (split brain): writes "
                    "are refused, never sent to either",
                    ", ".join(names),
                )
            self.candidates = names
            self._lose(current, drop=True, quiet=True)
        else:
            self.candidates = ()
            # Dropped only when the writer is known not to be it any more: a
            # primary that did not answer this time may still hold good
            # connections.
            self._lose(
                current, drop=self._known_not_writer(current, nodes, answers, view)
            )
        if view is None or not view.known:
            self._judge_timelines(nodes, answers)

    def _known_not_writer(
        self,
        current: Node | None,
        nodes: list[Node],
        answers: list[Role | None],
        view: PatroniView | None,
    ) -> bool:
        if current is None:
            return False
        if (
            view is not None
            and view.known
            and not view.leads(self._member(current, view))
        ):
            return True  # its lease is gone, or another member leads
        if current not in nodes:
            return False
        role = answers[nodes.index(current)]
        if role is None:
            silent = time.monotonic() - self._answered_at
            return self._give_up_after is not None and silent > self._give_up_after
        self._answered_at = time.monotonic()
        return not role.takes_writes or self._is_superseded(current, role)

    def _decided(
        self,
        nodes: list[Node],
        answers: list[tuple[Role | None, bool]],
        done: list[bool],
    ) -> bool:
        """Is the verdict clear before every node answered? So when a node
        answered, in time, that it is a primary on a newer timeline than any
        seen before, or when every node but those silent last round has
        answered: the others get a short grace (a primary among them is a
        split brain), and a node that hangs is not waited for round after
        round."""
        if all(
            finished or node.name in self._silent
            for node, finished in zip(nodes, done, strict=True)
        ):
            return True
        return self.timeline is not None and any(
            role is not None
            and role.takes_writes
            and role.timeline is not None
            and role.timeline > (self.timeline or 0)
            and not slow
            for role, slow in answers
        )

    def _is_superseded(self, node: Node, role: Role | None) -> bool:
        """A primary on an older timeline than one seen: never the writer again."""
        if role is None or role.timeline is None or self.timeline is None:
            return False
        if role.timeline >= self.timeline:
            self._superseded.discard(node.name)
            return False
        if node.name not in self._superseded:
            self._superseded.add(node.name)
            logger.error(
                "node %s takes writes on timeline %d, older than %d: "
                "it was superseded by a failover and is not the writer",
                node.name,
                role.timeline,
                self.timeline,
            )
        return True

    def _judge_timelines(self, nodes: list[Node], answers: list[Role | None]) -> None:
        """A standby not on the writer's timeline serves no reads (without
        Patroni, which says so itself).

        A standby's WAL receiver names its timeline, where the role may see
        it. An ordinary role sees only the control file's timeline, which
        waits for a restartpoint: it is trusted only for a node seen take
        writes on an older timeline (a demoted primary restarted before it
        was rewound holds writes the cluster threw away), so a healthy
        standby is never held back by it. With no writer (a split brain, or
        none answered) nothing is judged.
        """
        roles = dict(zip((node.name for node in nodes), answers, strict=True))
        for name, role in roles.items():
            if role is not None and role.takes_writes and role.timeline is not None:
                seen = self._was_primary.get(name, 0)
                self._was_primary[name] = max(seen, role.timeline)
        writer = None if self.primary is None else roles.get(self.primary.name)
        if writer is None or writer.timeline is None:
            return
        current = writer.timeline
        for node in nodes:
            role = roles[node.name]
            if role is None or role.takes_writes or role.timeline is None:
                continue
            streams_older = role.receiving is not None and role.receiving < current
            former = self._was_primary.get(node.name, current) < current
            self._topology.replica_set.set_diverged(
                core(node.reader),
                streams_older or (former and role.timeline < current),
                why=f"not shown to be on the writer's timeline {current}",
            )

    def _judge_readers(self, view: PatroniView) -> None:
        leader = view.leader
        timeline = None if leader is None else leader.timeline
        for node in self.nodes:
            member = self._member(node, view)
            if member is None or view.leads(member):
                continue
            self._topology.replica_set.set_diverged(
                core(node.reader),
                not member.readable(timeline),
                why="not on the current timeline (Patroni says so)",
            )

    def _elect(self, node: Node) -> None:
        topology, old = self._topology, self.primary
        self.candidates = ()
        self._answered_at = time.monotonic()
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
            logger.warning("node %s is the writer", node.name)
        topology.writer_found(node.name, quiet=node is not old)

    def _fence(self, primary: Node | None) -> int:
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
                "%d writer connections to the former primary cut "
                "(a transaction in flight on one fails as a lost connection, "
                "which unit_of_work reruns)",
                count,
            )
        return count

    def _lose(self, current: Node | None, *, drop: bool, quiet: bool = False) -> None:
        """No writer now; with ``drop``, ``current`` is not the primary any more:
        every writer connection is cut, in flight or idle, so nothing more is
        sent to it (a write in flight fails as a lost connection)."""
        topology = self._topology
        if drop and current is not None:
            self.primary = None
            if self._fence(None):
                pause(_NOTICED)
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

    async def _ask(self, node: Node) -> tuple[Role | None, bool]:
        probe = node.probe
        assert isinstance(probe, AsyncEngine)
        started = time.monotonic()
        try:
            role = await checked_within(probe, role_of, seconds=self._bound)
        except Exception as exc:  # down, hung or restarting: no verdict
            logger.debug("role of %s unknown: %r", node.name, exc)
            return None, False
        return role, time.monotonic() - started > self._late

    async def _ask_all(self) -> None:
        view = None if self.patroni is None else await self.patroni.view_async()
        nodes = self._asked(view)
        tasks = [asyncio.ensure_future(self._ask(node)) for node in nodes]
        pending = set(tasks)
        # Once decided, a grace for the others (at once: only silent ones).
        none = [False] * len(nodes)
        deadline: float | None = (
            time.monotonic() + _GRACE
            if nodes and self._decided(nodes, [_NO_ANSWER] * len(nodes), none)
            else None
        )
        try:
            while pending:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    break
                _, pending = await asyncio.wait(
                    pending, timeout=left, return_when=asyncio.FIRST_COMPLETED
                )
                if deadline is None and self._decided(
                    nodes,
                    [task.result() if task.done() else _NO_ANSWER for task in tasks],
                    [task.done() for task in tasks],
                ):
                    deadline = time.monotonic() + _GRACE
        finally:
            for task in pending:
                task.cancel()
        asked = [
            task.result() if task.done() and not task.cancelled() else _NO_ANSWER
            for task in tasks
        ]
        answers, late = [role for role, _ in asked], [slow for _, slow in asked]
        await greenlet_spawn(self._settle, nodes, answers, late, view)


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
            workers = ThreadPoolExecutor(
                max_workers=len(self.nodes)
                + (0 if self.patroni is None else len(self.patroni.urls))
                + 1,
                thread_name_prefix=ROLE_CHECK,
            )
            try:
                view = self._view(workers)
                nodes = self._asked(view)
                answers, late = self._ask_all(workers, nodes)
            finally:
                workers.shutdown(wait=False, cancel_futures=True)
            self._settle(nodes, answers, late, view)
            self._done += 1

    check_now = check

    def _view(self, workers: ThreadPoolExecutor) -> PatroniView | None:
        return None if self.patroni is None else self.patroni.view(workers)

    def _ask_all(
        self, workers: ThreadPoolExecutor, nodes: list[Node]
    ) -> tuple[list[Role | None], list[bool]]:
        started = time.monotonic()
        deadline = started + self._bound
        asked = [submit_check(workers, _probe(node), role_of) for node in nodes]
        results = [_NO_ANSWER] * len(nodes)
        pending = {future: i for i, (future, _) in enumerate(asked)}
        if nodes and self._decided(nodes, results, [False] * len(nodes)):
            deadline = started + _GRACE  # only silent ones: not waited for
        while pending and (left := deadline - time.monotonic()) > 0:
            done, _ = wait(pending, timeout=left, return_when=FIRST_COMPLETED)
            for future in done:
                i = pending.pop(future)
                try:
                    role = future.result()
                except Exception as exc:  # down, hung or restarting: no verdict
                    logger.debug("role of %s unknown: %r", nodes[i].name, exc)
                    continue
                results[i] = (role, time.monotonic() - started > self._late)
            finished = [i not in pending.values() for i in range(len(nodes))]
            if pending and self._decided(nodes, results, finished):
                deadline = min(deadline, time.monotonic() + _GRACE)
        for i in pending.values():
            asked[i][1]()  # given up: its connection is cut, its worker free
            logger.debug("role of %s unknown: no answer", nodes[i].name)
        return [role for role, _ in results], [slow for _, slow in results]


def _probe(node: Node) -> Engine:
    assert isinstance(node.probe, Engine), "a SyncRouter's"
    return node.probe
