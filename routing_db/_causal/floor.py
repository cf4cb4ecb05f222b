"""Causal tokens: what a context has written, so its later reads can see it.

A token holds, per **cluster** written to, the writer's position after the
newest commit that wrote there (PostgreSQL: its WAL position, the cluster
being its ``system_identifier``; MariaDB: the commit's GTID, the cluster its
replication domain), or the wall-clock time of a commit whose position is
unknown (backends without positions, a writer that died under its COMMIT). A
position is one integer: a WAL position, or a GTID's sequence number with its
replication domain above bit 64, so that positions of different domains
never count as reached. A read compares only the positions of the cluster of
the server that serves it. The floor lives in ``contextvars``: the task that
committed and tasks created inside it. As a string it can travel in an HTTP
header, a cookie or a job payload. Knows nothing of SQLAlchemy.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable
from contextvars import ContextVar, Token
from typing import NamedTuple, ParamSpec, TypeVar

from .._decide.context import ContextDecorator
from .._exceptions import ConfigurationError

__all__ = [
    "ANY_CLUSTER",
    "DOMAIN_SHIFT",
    "FLOOR",
    "CausalFloor",
    "Mark",
    "adopt_token",
    "causal_token",
    "current_causal_token",
    "current_floor",
    "encode_gtid",
    "format_lsn",
    "format_token",
    "gtid_cluster",
    "newest_token",
    "reached",
    "record_write",
]

P = ParamSpec("P")
R = TypeVar("R")

_MAX_TOKEN = 512
# A position with its cluster and the time it was recorded (tokens since J);
# the bare forms are the older tokens', still accepted.
_SUFFIX = r"(?:~([0-9A-Za-z._-]{1,40})~(\d{1,12}(?:\.\d{1,9})?))?"
_LSN_PART = re.compile(r"pg:([0-9A-F]{1,8})/([0-9A-F]{1,8})" + _SUFFIX)
_TIME_PART = re.compile(r"t:(\d{1,12}(?:\.\d{1,9})?)")
_GTID_PART = re.compile(r"gtid:(\d{1,10})-(\d{1,10})-(\d{1,20})" + _SUFFIX)

DOMAIN_SHIFT = 64
_SEQ_MASK = (1 << DOMAIN_SHIFT) - 1

ANY_CLUSTER = ""
"""The cluster of a position whose cluster is not known (an older token's):
it is compared on every cluster, as before clusters were told apart."""


def encode_gtid(domain: int, seq: int) -> int:
    """A MariaDB GTID's position: its sequence number within its domain."""
    return (domain << DOMAIN_SHIFT) | (seq & _SEQ_MASK)


def gtid_cluster(domain: int) -> str:
    """The cluster name of a MariaDB replication domain."""
    return f"d{domain}"


def reached(position: int, floor: int) -> bool:
    """Is ``position`` at or past ``floor`` (and in the same GTID domain)?"""
    return position >> DOMAIN_SHIFT == floor >> DOMAIN_SHIFT and position >= floor


class Mark(NamedTuple):
    """The newest write a context made on one cluster."""

    position: int
    server: int | None  # the GTID's server id (MariaDB), else None
    at: float | None  # when it was recorded (None: an older token's)
    # Came in a token (another process, another deployment) rather than
    # from a commit made in this context.
    told: bool = False


class CausalFloor:
    """The newest writes a context must be able to read (mutable, only grows)."""

    __slots__ = ("marks", "token", "unsure", "wrote", "wrote_at")

    def __init__(
        self,
        lsn: int | None = None,
        wrote_at: float | None = None,
        server: int | None = None,
        cluster: str = ANY_CLUSTER,
    ) -> None:
        self.marks: dict[str, Mark] = {}
        if lsn is not None:
            self.marks[cluster] = Mark(lsn, server, None)
        self.wrote_at = wrote_at  # a commit whose position is unknown
        # When a commit on a backend with positions could not read its own
        # (its connection died under it): until the writer's position is
        # known again, this context's reads stay on the writer.
        self.unsure: float | None = None
        self.wrote = False  # a commit in this scope raised it
        self.token: Token[CausalFloor | None] | None = None

    @property
    def lsn(self) -> int | None:
        """The newest position of any cluster (a one-cluster floor's position)."""
        return max((mark.position for mark in self.marks.values()), default=None)

    @property
    def server(self) -> int | None:
        """The GTID server id of ``lsn``'s mark."""
        newest = max(self.marks.values(), default=None, key=lambda m: m.position)
        return None if newest is None else newest.server

    def raise_to(
        self,
        lsn: int | None,
        wrote_at: float | None,
        server: int | None = None,
        cluster: str = ANY_CLUSTER,
        *,
        at: float | None = None,
        told: bool = False,
    ) -> None:
        """Move the floor forward; never back."""
        if lsn is not None:
            self._raise_mark(cluster, Mark(lsn, server, at, told))
        if wrote_at is not None and (self.wrote_at is None or wrote_at > self.wrote_at):
            self.wrote_at = wrote_at

    def _raise_mark(self, cluster: str, mark: Mark) -> None:
        known = self.marks.get(cluster)
        if known is None or mark.position > known.position:
            self.marks[cluster] = mark
        elif mark.position == known.position and not mark.told and known.told:
            self.marks[cluster] = mark  # learned here too: no longer only told

    def cover(self, other: CausalFloor) -> None:
        """Raise this floor to cover everything ``other`` covers."""
        for cluster, mark in other.marks.items():
            self._raise_mark(cluster, mark)
        self.raise_to(None, other.wrote_at)
        if other.unsure is not None:
            self.unsure = max(self.unsure or 0.0, other.unsure)

    def settle(self, position: int, cluster: str) -> None:
        """The writer's position now, read after a commit whose own could not
        be: it covers that commit, so the floor is sure again."""
        self.raise_to(position, None, None, cluster, at=time.time())
        if self.wrote_at is not None and self.wrote_at == self.unsure:
            self.wrote_at = None  # the time window stood in for the position
        self.unsure = None

    def needs(self, clusters: Iterable[str] | None) -> list[int]:
        """The positions a server of ``clusters`` must have replayed (``None``:
        its cluster is not known, so every position counts)."""
        if clusters is None:
            return [mark.position for mark in self.marks.values()]
        wanted = {ANY_CLUSTER, *clusters}
        return [mark.position for c, mark in self.marks.items() if c in wanted]

    def told_elsewhere(
        self, clusters: Iterable[str] | None, now: float, window: float
    ) -> bool:
        """Did a token say, less than ``window`` seconds ago, that a write was
        made on another cluster than ``clusters``? (A blue/green switch: that
        write may reach this cluster by other means; it is not known when.)"""
        if clusters is None:
            return False
        own = set(clusters)
        return any(
            mark.told
            and mark.at is not None
            and cluster not in own
            and cluster != ANY_CLUSTER
            and now - mark.at < window
            for cluster, mark in self.marks.items()
        )

    def __bool__(self) -> bool:
        return bool(self.marks) or self.wrote_at is not None


FLOOR: ContextVar[CausalFloor | None] = ContextVar("routing_db_causal", default=None)
"""This context's causal floor; ``FLOOR.get()`` is ``current_floor()`` uncalled."""


def current_floor() -> CausalFloor | None:
    """The causal floor of the current context, if it has one."""
    return FLOOR.get()


def record_write(
    *,
    lsn: int | None,
    wrote_at: float | None = None,
    server: int | None = None,
    cluster: str = ANY_CLUSTER,
    unsure: bool = False,
) -> None:
    """Raise the current context's floor after a commit that wrote
    (``unsure``: its position should have been read, and could not be)."""
    now = time.time()
    if wrote_at is None and lsn is None:
        wrote_at = now
    floor = FLOOR.get()
    if floor is None:
        # Deliberately set without a reset: the token must outlive the commit
        # that made it (the request's later reads depend on it). It stays in
        # this task's context (and its children's), never in another request's.
        floor = CausalFloor()
        FLOOR.set(floor)
    floor.raise_to(lsn, wrote_at, server, cluster, at=now)
    if unsure:
        floor.unsure = wrote_at
    floor.wrote = True


def format_lsn(lsn: int) -> str:
    """PostgreSQL's text form of a WAL position."""
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def format_token(floor: CausalFloor) -> str:
    """The opaque token string of ``floor`` (see ``current_causal_token``)."""
    parts = []
    for cluster, mark in floor.marks.items():
        lsn = mark.position
        if mark.server is not None:
            part = f"gtid:{lsn >> DOMAIN_SHIFT}-{mark.server}-{lsn & _SEQ_MASK}"
        else:
            part = f"pg:{format_lsn(lsn)}"
        if cluster != ANY_CLUSTER and mark.at is not None:
            part += f"~{cluster}~{mark.at:.3f}"
        parts.append(part)
    if floor.wrote_at is not None:
        parts.append(f"t:{floor.wrote_at:.6f}")
    return ",".join(parts)


def _as_of(when: str | None) -> float | None:
    # Tokens come back from clients: a time from the future would keep
    # their reads on the writer for ever. As of now, the time window
    # (sticky_seconds) still covers a write made just now elsewhere.
    return None if when is None else min(float(when), time.time())


def _parse(token: str) -> CausalFloor:
    if not isinstance(token, str) or len(token) > _MAX_TOKEN:
        raise ConfigurationError("malformed causal token: not a short string")
    floor = CausalFloor()
    for part in token.split(","):
        if match := _LSN_PART.fullmatch(part):
            lsn = (int(match[1], 16) << 32) | int(match[2], 16)
            floor.raise_to(
                lsn, None, None, match[3] or ANY_CLUSTER, at=_as_of(match[4]),
                told=True,
            )  # fmt: skip
        elif match := _GTID_PART.fullmatch(part):
            domain, server, seq = (int(group) for group in match.groups()[:3])
            if seq > _SEQ_MASK:
                raise ConfigurationError("malformed causal token: GTID out of range")
            floor.raise_to(
                encode_gtid(domain, seq), None, server, match[4] or ANY_CLUSTER,
                at=_as_of(match[5]), told=True,
            )  # fmt: skip
        elif match := _TIME_PART.fullmatch(part):
            floor.raise_to(None, _as_of(match[1]))
        else:
            # Never ignore it: a token we cannot read could hide a write the
            # caller expects to see, and a silent stale read is worse.
            raise ConfigurationError(
                "malformed causal token; expected e.g. 'pg:16/B374D848', "
                "'gtid:0-1-42' or 't:1764100000.5' as produced by "
                "current_causal_token()"
            )
    return floor


def newest_token(*tokens: str | None) -> str | None:
    """The newest of causal tokens (any may be ``None``): a token that covers
    each of them; ``None`` if all are."""
    floor = CausalFloor()
    for token in tokens:
        if token is not None:
            floor.cover(_parse(token))
    return format_token(floor) if floor else None


def adopt_token(token: str | None) -> None:
    """Raise the current context's floor to ``token`` (never lower it): for a
    token that arrives mid-flow (a test client, a websocket message)."""
    if token is None:
        return
    told = _parse(token)
    floor = FLOOR.get()
    if floor is None:
        # As record_write: set without a reset, so that it outlives this
        # call; it stays in this task's context (and its children's).
        floor = CausalFloor()
        FLOOR.set(floor)
    floor.cover(told)


def current_causal_token() -> str | None:
    """The current context's causal token as an opaque string, or ``None``."""
    floor = FLOOR.get()
    return format_token(floor) if floor else None


class causal_token(ContextDecorator):
    """Read at least what ``token`` saw: context manager and decorator."""

    __slots__ = ("_given",)

    def __init__(self, token: str | None) -> None:
        # Parsed now, so a malformed token fails where it enters the program.
        self._given = _parse(token) if token else None

    def _enter(self) -> None:
        outer = FLOOR.get()
        floor = CausalFloor()
        for known in (outer, self._given):
            if known is not None:
                floor.cover(known)
        floor.token = FLOOR.set(floor)

    def _exit(self) -> None:
        inner = FLOOR.get()
        assert inner is not None and inner.token is not None
        FLOOR.reset(inner.token)
        if inner.wrote:
            # Writes made inside the block stay visible after it.
            outer = FLOOR.get()
            if outer is None:
                outer = CausalFloor()
                FLOOR.set(outer)  # as record_write: outlives the block
            outer.cover(inner)
            outer.wrote = True
