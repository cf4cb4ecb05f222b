"""Causal tokens: what a context has written, so its later reads can see it.

A token is the writer's position after a commit that wrote (PostgreSQL: its
WAL position; MariaDB: the commit's GTID), or the wall-clock time of that
commit (backends without positions). A position is one integer: a WAL
position, or a GTID's sequence number with its replication domain above bit
64, so that positions of different domains never count as reached. It lives
in ``contextvars``: the task that committed and tasks created inside it. As a
string it can travel in an HTTP header or a job payload.
Knows nothing of SQLAlchemy.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Coroutine
from contextvars import ContextVar, Token
from typing import Any, ParamSpec, TypeVar, overload

from ._context import ContextDecorator
from ._exceptions import ConfigurationError

__all__ = [
    "DOMAIN_SHIFT",
    "FLOOR",
    "CausalFloor",
    "causal_token",
    "current_causal_token",
    "current_floor",
    "encode_gtid",
    "format_lsn",
    "format_token",
    "reached",
    "record_write",
]

P = ParamSpec("P")
R = TypeVar("R")

_MAX_TOKEN = 128
_LSN_PART = re.compile(r"pg:([0-9A-F]{1,8})/([0-9A-F]{1,8})")
_TIME_PART = re.compile(r"t:(\d{1,12}(?:\.\d{1,9})?)")
_GTID_PART = re.compile(r"gtid:(\d{1,10})-(\d{1,10})-(\d{1,20})")

DOMAIN_SHIFT = 64
_SEQ_MASK = (1 << DOMAIN_SHIFT) - 1


def encode_gtid(domain: int, seq: int) -> int:
    """A MariaDB GTID's position: its sequence number within its domain."""
    return (domain << DOMAIN_SHIFT) | (seq & _SEQ_MASK)


def reached(position: int, floor: int) -> bool:
    """Is ``position`` at or past ``floor`` (and in the same GTID domain)?"""
    return position >> DOMAIN_SHIFT == floor >> DOMAIN_SHIFT and position >= floor


class CausalFloor:
    """The newest write a context must be able to read (mutable, only grows)."""

    __slots__ = ("lsn", "server", "token", "wrote", "wrote_at")

    def __init__(
        self,
        lsn: int | None = None,
        wrote_at: float | None = None,
        server: int | None = None,
    ) -> None:
        self.lsn = lsn
        self.server = server  # the GTID's server id (MariaDB), else None
        self.wrote_at = wrote_at
        self.wrote = False  # a commit in this scope raised it
        self.token: Token[CausalFloor | None] | None = None

    def raise_to(
        self, lsn: int | None, wrote_at: float | None, server: int | None = None
    ) -> None:
        """Move the floor forward; never back."""
        if lsn is not None and (self.lsn is None or lsn > self.lsn):
            self.lsn = lsn
            self.server = server
        if wrote_at is not None and (self.wrote_at is None or wrote_at > self.wrote_at):
            self.wrote_at = wrote_at

    def __bool__(self) -> bool:
        return self.lsn is not None or self.wrote_at is not None


FLOOR: ContextVar[CausalFloor | None] = ContextVar("routing_db_causal", default=None)
"""This context's causal floor; ``FLOOR.get()`` is ``current_floor()`` uncalled."""


def current_floor() -> CausalFloor | None:
    """The causal floor of the current context, if it has one."""
    return FLOOR.get()


def record_write(
    *, lsn: int | None, wrote_at: float | None = None, server: int | None = None
) -> None:
    """Raise the current context's floor after a commit that wrote."""
    if wrote_at is None and lsn is None:
        wrote_at = time.time()
    floor = FLOOR.get()
    if floor is not None:
        floor.raise_to(lsn, wrote_at, server)
        floor.wrote = True
        return
    # Deliberately set without a reset: the token must outlive the commit
    # that made it (the request's later reads depend on it). It stays in this
    # task's context (and its children's), never in any other request's.
    FLOOR.set(CausalFloor(lsn, wrote_at, server))


def format_lsn(lsn: int) -> str:
    """PostgreSQL's text form of a WAL position."""
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def format_token(floor: CausalFloor) -> str:
    """The opaque token string of ``floor`` (see ``current_causal_token``)."""
    parts = []
    if floor.lsn is not None and floor.server is not None:
        lsn = floor.lsn
        parts.append(f"gtid:{lsn >> DOMAIN_SHIFT}-{floor.server}-{lsn & _SEQ_MASK}")
    elif floor.lsn is not None:
        parts.append(f"pg:{format_lsn(floor.lsn)}")
    if floor.wrote_at is not None:
        parts.append(f"t:{floor.wrote_at:.6f}")
    return ",".join(parts)


def _parse(token: str) -> CausalFloor:
    if not isinstance(token, str) or len(token) > _MAX_TOKEN:
        raise ConfigurationError("malformed causal token: not a short string")
    floor = CausalFloor()
    for part in token.split(","):
        if match := _LSN_PART.fullmatch(part):
            floor.raise_to((int(match[1], 16) << 32) | int(match[2], 16), None)
        elif match := _GTID_PART.fullmatch(part):
            domain, server, seq = (int(group) for group in match.groups())
            if seq > _SEQ_MASK:
                raise ConfigurationError("malformed causal token: GTID out of range")
            floor.raise_to(encode_gtid(domain, seq), None, server)
        elif match := _TIME_PART.fullmatch(part):
            # Tokens come back from clients: one from the future would keep
            # their reads on the writer for ever. As of now, the time window
            # (sticky_seconds) still covers a write made just now elsewhere.
            floor.raise_to(None, min(float(match[1]), time.time()))
        else:
            # Never ignore it: a token we cannot read could hide a write the
            # caller expects to see, and a silent stale read is worse.
            raise ConfigurationError(
                "malformed causal token; expected e.g. 'pg:16/B374D848', "
                "'gtid:0-1-42' or 't:1764100000.5' as produced by "
                "current_causal_token()"
            )
    return floor


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
                floor.raise_to(known.lsn, known.wrote_at, known.server)
        floor.token = FLOOR.set(floor)

    def _exit(self) -> None:
        inner = FLOOR.get()
        assert inner is not None and inner.token is not None
        FLOOR.reset(inner.token)
        if inner.wrote:
            # Writes made inside the block stay visible after it.
            record_write(lsn=inner.lsn, wrote_at=inner.wrote_at, server=inner.server)

    @overload
    def __call__(
        self, fn: Callable[P, Coroutine[Any, Any, R]]
    ) -> Callable[P, Coroutine[Any, Any, R]]: ...
    @overload
    def __call__(self, fn: Callable[P, R]) -> Callable[P, R]: ...
    def __call__(self, fn: Callable[P, Any]) -> Any:
        return self._decorate(fn)
