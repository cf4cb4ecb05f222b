"""What ``router.check()`` and the start-up check find: each of the router's
servers reached once through its own engine (its hooks, connect bound and
driver), and judged as the router will use it."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable
from typing import Literal

from sqlalchemy.engine import Connection

from .._backends.backend import CLUSTERS
from .._backends.positions import takes_writes
from .._backends.registry import backend_for
from .._engines.setup import NotAStandby, WriterIsAStandby
from .._exceptions import ConfigurationError
from .._retry import error_cause

__all__ = [
    "STARTUP_CHECKS",
    "Seen",
    "ServerProblem",
    "StartupCheck",
    "check_startup_mode",
    "failed",
    "judge",
    "look",
    "problem_of",
    "react",
]

logger = logging.getLogger("routing_db")

StartupCheck = Literal["warn", "strict", "off"]
STARTUP_CHECKS = ("warn", "strict", "off")


@dataclasses.dataclass(frozen=True)
class ServerProblem:
    """One thing wrong with one of the router's servers (no password in it)."""

    engine: str
    role: str
    message: str

    def __str__(self) -> str:
        return f"{self.role} {self.engine}: {self.message}"


@dataclasses.dataclass
class Seen:
    """What one connection told of its server (``error``: none was had)."""

    name: str
    role: str
    error: str | None = None
    takes_writes: bool | None = None
    clusters: frozenset[str] | None = None  # the replica's, or the writer's


def check_startup_mode(mode: str) -> None:
    """Refuse a ``startup_check`` that is not one of its three values."""
    if mode not in STARTUP_CHECKS:
        raise ConfigurationError(
            f"startup_check must be 'warn', 'strict' or 'off', got {mode!r}"
        )


def look(connection: Connection, seen: Seen) -> None:
    """Ask the server ``connection`` reached what ``judge`` needs (either
    face: an async connection runs this through ``run_sync``)."""
    seen.takes_writes = takes_writes(connection)
    if seen.role == "replica":
        seen.clusters = connection.info.get(CLUSTERS)
        return
    backend = backend_for(connection.dialect.name)
    if backend is not None and backend.has_positions:
        now = backend.writer_now(connection)
        if now is not None:
            seen.clusters = frozenset({now[1]})


def failed(seen: Seen, error: BaseException, secrets: Iterable[str | None]) -> None:
    """Record why no connection could be had (or asked)."""
    if isinstance(error, WriterIsAStandby):
        seen.error = "it is a standby (in recovery), not the primary: check writer_url"
    elif isinstance(error, NotAStandby):
        seen.error = f"{NotAStandby.cause}: check replica_urls"
    else:
        seen.error = f"cannot connect: {error_cause(error, secrets)}"


def problem_of(item: Seen, writer: Seen) -> str | None:
    """What is wrong with the server ``item`` saw (None: nothing), given what
    the writer's connection saw."""
    if item.error is not None:
        return item.error
    if item.role == "writer":
        if item.takes_writes is False:
            return "it does not take writes (a standby): check writer_url"
        return None
    if item.takes_writes:
        return "it takes writes: it is a primary, not a standby"
    if writer.clusters and item.clusters and not writer.clusters & item.clusters:
        return (
            "it replicates a different primary (cluster "
            f"{', '.join(sorted(item.clusters))}; the writer's is "
            f"{', '.join(sorted(writer.clusters))})"
        )
    return None


def judge(seen: list[Seen]) -> list[ServerProblem]:
    """The problems in what the connections saw (the writer first)."""
    problems = []
    for item in seen:
        message = problem_of(item, seen[0])
        if message is not None:
            problems.append(ServerProblem(item.name, item.role, message))
    return problems


def react(problems: list[ServerProblem], mode: StartupCheck, *, sync: bool) -> None:
    """What the start-up check does with ``problems``: raise them all
    (``strict``) or log each (``warn``)."""
    if not problems:
        return
    if mode == "strict":
        listed = "\n".join(f"- {problem}" for problem in problems)
        raise ConfigurationError(
            f"routing_db's start-up check found {len(problems)} problem(s):\n"
            f"{listed}\n(startup_check='warn' starts anyway and logs them)"
        )
    call = "router.check()" if sync else "await router.check()"
    for problem in problems:
        logger.warning(
            "start-up check: %s (startup_check='strict' refuses to start; "
            "%s tells again)",
            problem,
            call,
        )
