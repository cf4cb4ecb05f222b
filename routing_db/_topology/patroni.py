"""Patroni's view of a cluster, from its members' REST API (``GET /cluster``).

A node the HA manager no longer holds as leader is not the writer, whatever
its backends answer: a leader whose Patroni hung keeps answering
``pg_is_in_recovery() = false`` after its lease expired, and what it commits
then is thrown away when another member is promoted. Patroni knows (its
leader lock lives in the DCS); every member answers ``/cluster`` from it.
This module asks and judges; ``discovery`` acts on the verdict.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import ssl
import time
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from .._exceptions import ConfigurationError

__all__ = [
    "SILENT",
    "Member",
    "PatroniSource",
    "PatroniView",
    "check_rest_urls",
    "judge",
]

logger = logging.getLogger("routing_db")

# Member states in which a replica replays the leader's timeline (Patroni 3+
# says "streaming"; "running" is a replica replaying from the archive).
_READABLE = frozenset({"streaming", "running"})
_MAX_ANSWER = 1 << 20
# Seconds a leader's own Patroni may go unheard before it is not the leader.
SILENT = 1.5
# Seconds to wait for the other members once most have answered: a member
# that hangs costs a round this, not the whole bound.
_GRACE = 0.25


class Member(NamedTuple):
    """One member as Patroni lists it."""

    name: str
    host: str
    port: int
    role: str  # leader, replica, sync_standby, standby_leader...
    state: str  # running, streaming, starting, stopped...
    timeline: int | None
    noloadbalance: bool
    api: str = ""  # host:port of its REST API

    def readable(self, leader_timeline: int | None) -> bool:
        """May this member serve reads: a replica that follows the leader's
        timeline, not tagged ``noloadbalance``?"""
        if self.noloadbalance or self.state not in _READABLE:
            return False
        return (
            leader_timeline is None
            or self.timeline is None
            or self.timeline >= leader_timeline
        )


class PatroniView(NamedTuple):
    """What the members that answered say together."""

    known: bool  # at least one member answered
    leader: Member | None  # the member holding the leader lock (None: nobody)
    members: tuple[Member, ...]

    def member(self, host: str | None, port: int | None, name: str) -> Member | None:
        """The member a node is: by its server's address, else by name."""
        for member in self.members:
            if member.host == host and member.port == port:
                return member
        return next((m for m in self.members if m.name == name), None)

    def leads(self, member: Member | None) -> bool:
        """Is ``member`` the leader of this view?"""
        return (
            member is not None
            and self.leader is not None
            and member.name == self.leader.name
        )


UNKNOWN_VIEW = PatroniView(False, None, ())


def _members(answer: dict[str, Any]) -> list[Member]:
    found = []
    for item in answer.get("members") or []:
        try:
            tags = item.get("tags") or {}
            timeline = item.get("timeline")
            api = item.get("api_url")
            found.append(
                Member(
                    name=str(item["name"]),
                    host=str(item.get("host", "")),
                    port=int(item.get("port") or 5432),
                    role=str(item.get("role", "")),
                    state=str(item.get("state", "")),
                    timeline=None if timeline is None else int(timeline),
                    noloadbalance=bool(tags.get("noloadbalance")),
                    api=where(str(api)) if api else "",
                )
            )
        except (KeyError, TypeError, ValueError):
            continue  # a member we cannot read says nothing
    return found


def judge(
    answers: Sequence[tuple[str, dict[str, Any] | None]],
    silent: Mapping[str, float] | None = None,
) -> PatroniView:
    """The verdict of the members' ``/cluster`` answers, as (REST URL asked,
    answer or ``None``); ``silent``: seconds since each REST API (host:port)
    last answered (none: it answered now, or never).

    Any answer that shows no leader wins: one member has seen the lease
    expire. So does a leader whose own Patroni has not answered for
    ``SILENT`` seconds (as HAProxy's check of Patroni's API marks it down):
    a leader whose Patroni hung keeps its lease for up to ``ttl``, while its
    standbys may stop following it, and writes must stop going there before
    that. Answers that name different leaders (views of different moments)
    are settled by the newest timeline; a tie names nobody.
    """
    views = [_members(answer) for _, answer in answers if answer is not None]
    if not views:
        return UNKNOWN_VIEW
    asked = {where(url) for url, _ in answers}
    answered = {where(url) for url, answer in answers if answer is not None}
    leaders: list[Member | None] = [
        next((m for m in view if m.role == "leader"), None) for view in views
    ]
    chosen: Member | None = None
    if all(leader is not None for leader in leaders):
        named = {leader.name: leader for leader in leaders if leader is not None}
        newest = max(named.values(), key=lambda m: m.timeline or 0)
        top = newest.timeline or 0
        tied = [m for m in named.values() if (m.timeline or 0) == top]
        chosen = newest if len(tied) == 1 else None
    # The members as the view that names the verdict's leader lists them
    # (the first view when there is none): one moment, not a mixture.
    source = views[0]
    if chosen is not None:
        source, chosen = next(
            (view, leader)
            for view, leader in zip(views, leaders, strict=True)
            if leader is not None and leader.name == chosen.name
        )
        quiet = (silent or {}).get(chosen.api)
        if (
            chosen.api in asked
            and chosen.api not in answered
            and (quiet is None or quiet > SILENT)
        ):
            chosen = None  # its own Patroni does not answer
    return PatroniView(True, chosen, tuple(source))


def check_rest_urls(urls: Sequence[str]) -> list[str]:
    """Patroni REST API base URLs (``http://host:8008``), checked."""
    if isinstance(urls, str) or not urls:
        raise ConfigurationError("patroni must be a non-empty list of REST API URLs")
    checked = []
    for i, url in enumerate(urls):
        parts = urllib.parse.urlsplit(str(url))
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigurationError(
                f"patroni[{i}] must be a Patroni REST API URL such as "
                "http://10.0.0.1:8008"
            )
        checked.append(str(url).rstrip("/"))
    return checked


def where(url: str) -> str:
    """``host:port`` of a REST URL, for logs (never its credentials)."""
    parts = urllib.parse.urlsplit(url)
    return f"{parts.hostname}:{parts.port or (443 if parts.scheme == 'https' else 80)}"


def _decode(body: bytes) -> dict[str, Any] | None:
    try:
        answer = json.loads(body)
    except ValueError:
        return None
    return answer if isinstance(answer, dict) else None


def fetch(url: str, timeout: float) -> dict[str, Any] | None:
    """``GET url/cluster`` (threads); ``None`` when no usable answer came in time."""
    try:
        with urllib.request.urlopen(f"{url}/cluster", timeout=timeout) as answer:
            return _decode(answer.read(_MAX_ANSWER))
    except (OSError, ValueError) as exc:
        logger.debug("Patroni at %s did not answer: %r", where(url), exc)
        return None


async def fetch_async(url: str, *, seconds: float) -> dict[str, Any] | None:
    """``GET url/cluster`` on the event loop; ``None`` when no usable answer
    came within ``seconds`` (a member that hangs is not waited for)."""
    try:
        return await asyncio.wait_for(_get(url), seconds)
    except (OSError, TimeoutError, ValueError) as exc:
        logger.debug("Patroni at %s did not answer: %r", where(url), exc)
        return None


async def _get(url: str) -> dict[str, Any] | None:
    parts = urllib.parse.urlsplit(url)
    https = parts.scheme == "https"
    host = parts.hostname or ""
    port = parts.port or (443 if https else 80)
    reader, writer = await asyncio.open_connection(
        host, port, ssl=ssl.create_default_context() if https else None
    )
    try:
        path = f"{parts.path}/cluster"
        # HTTP/1.0: the body ends with the connection, never chunked.
        writer.write(
            f"GET {path} HTTP/1.0\r\nHost: {host}\r\nAccept: application/json\r\n"
            "\r\n".encode()
        )
        await writer.drain()
        raw = await reader.read(_MAX_ANSWER)
        while chunk := await reader.read(_MAX_ANSWER):
            raw += chunk
            if len(raw) > _MAX_ANSWER:
                return None
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    status = head.split(b"\r\n", 1)[0].split()
    if len(status) < 2 or status[1] != b"200":
        return None
    return _decode(body)


class PatroniSource:
    """The members' REST APIs, asked each discovery round: a round waits for
    most of them and a short grace for the rest, never the whole bound for a
    member that hangs; a leader is judged by when its own API last answered."""

    def __init__(self, urls: Sequence[str], *, bound: float) -> None:
        self.urls = list(urls)
        self._bound = bound
        self._heard: dict[str, float] = {}  # host:port -> when it last answered

    def _judge(self, answers: list[dict[str, Any] | None]) -> PatroniView:
        now = time.monotonic()
        for url, answer in zip(self.urls, answers, strict=True):
            if answer is not None:
                self._heard[where(url)] = now
        silent = {api: now - heard for api, heard in self._heard.items()}
        return judge(list(zip(self.urls, answers, strict=True)), silent)

    def _enough(self, answered: int) -> bool:
        return answered > len(self.urls) // 2

    async def view_async(self) -> PatroniView:
        """Ask every member on the event loop; the verdict."""
        tasks = [
            asyncio.ensure_future(fetch_async(url, seconds=self._bound))
            for url in self.urls
        ]
        deadline = time.monotonic() + self._bound
        pending = set(tasks)
        try:
            while pending and (left := deadline - time.monotonic()) > 0:
                _, pending = await asyncio.wait(
                    pending, timeout=left, return_when=asyncio.FIRST_COMPLETED
                )
                answered = sum(t.done() and t.result() is not None for t in tasks)
                if pending and self._enough(answered):
                    _, pending = await asyncio.wait(
                        pending, timeout=min(_GRACE, max(0.0, left))
                    )
                    break
        finally:
            for task in pending:
                task.cancel()
        return self._judge([t.result() if t.done() else None for t in tasks])

    def view(self, workers: concurrent.futures.Executor) -> PatroniView:
        """Ask every member on ``workers`` (threads); the verdict."""
        futures = [workers.submit(fetch, url, self._bound) for url in self.urls]
        deadline = time.monotonic() + self._bound
        pending = set(futures)
        while pending and (left := deadline - time.monotonic()) > 0:
            _, pending = concurrent.futures.wait(
                pending, timeout=left, return_when=concurrent.futures.FIRST_COMPLETED
            )
            answered = sum(f.done() and f.result() is not None for f in futures)
            if pending and self._enough(answered):
                concurrent.futures.wait(pending, timeout=min(_GRACE, max(0.0, left)))
                break
        return self._judge([f.result() if f.done() else None for f in futures])
