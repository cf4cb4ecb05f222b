"""Causal tokens in contextvars, and their string form (no database)."""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections.abc import Callable
from typing import Any, TypeVar

import pytest

from routing_db import ConfigurationError, causal_token, current_causal_token
from routing_db._causal.floor import current_floor, format_lsn, record_write

T = TypeVar("T")


def run_fresh(fn: Callable[[], T]) -> T:
    return contextvars.Context().run(fn)


def test_no_token_by_default() -> None:
    assert run_fresh(current_causal_token) is None


def test_record_and_round_trip() -> None:
    def body() -> str | None:
        record_write(lsn=(0x16 << 32) | 0xB374D848)
        record_write(lsn=5)  # an older position never lowers the floor
        return current_causal_token()

    token = run_fresh(body)
    assert token == "pg:16/B374D848"

    def read_back() -> int | None:
        with causal_token(token):
            floor = current_floor()
            return floor.lsn if floor else None

    assert run_fresh(read_back) == (0x16 << 32) | 0xB374D848


def test_time_tokens() -> None:
    def body() -> str | None:
        record_write(lsn=None)
        return current_causal_token()

    token = run_fresh(body)
    assert token is not None and token.startswith("t:")


def test_a_time_token_from_the_future_counts_from_now() -> None:
    def body() -> float | None:
        with causal_token("t:999999999999"):  # the year 33658
            floor = current_floor()
            return floor.wrote_at if floor else None

    before = time.time()
    wrote_at = run_fresh(body)
    assert wrote_at is not None and before <= wrote_at <= time.time()


@pytest.mark.parametrize(
    "bad",
    ["pg:16", "pg:zz/1", "lsn:0/1", "t:abc", "pg:0/1,,", "x" * 200, "pg:0/1;t:1"],
)
def test_malformed_tokens_are_refused(bad: str) -> None:
    with pytest.raises(ConfigurationError, match="causal token"):
        causal_token(bad)


def test_empty_or_missing_token_is_no_floor() -> None:
    def body() -> str | None:
        with causal_token(None), causal_token(""):
            return current_causal_token()

    assert run_fresh(body) is None


def test_scope_resets_but_keeps_writes_made_inside() -> None:
    def body() -> list[str | None]:
        seen = []
        with causal_token("pg:0/10"):
            seen.append(current_causal_token())
        seen.append(current_causal_token())  # reset: the given floor is gone
        with causal_token("pg:0/10"):
            record_write(lsn=0x20)
        seen.append(current_causal_token())  # the write made inside stays
        return seen

    assert run_fresh(body) == ["pg:0/10", None, "pg:0/20"]


def test_decorator_forms() -> None:
    @causal_token("pg:1/0")
    def sync_fn() -> str | None:
        return current_causal_token()

    @causal_token("pg:2/0")
    async def async_fn() -> str | None:
        return current_causal_token()

    def run_async() -> Any:
        return asyncio.run(async_fn())

    assert run_fresh(sync_fn) == "pg:1/0"
    assert run_fresh(run_async) == "pg:2/0"


async def test_tasks_see_their_parents_floor_not_the_reverse() -> None:
    async def child() -> str | None:
        record_write(lsn=0x30)
        return current_causal_token()

    async def parent() -> tuple[str | None, str | None]:
        child_token = await asyncio.create_task(child())
        return child_token, current_causal_token()

    task = asyncio.create_task(parent(), context=contextvars.Context())
    assert await task == ("pg:0/30", None)


def test_format_lsn() -> None:
    assert format_lsn(0) == "0/0"
    assert format_lsn((1 << 32) + 255) == "1/FF"


def test_floors_are_kept_per_cluster() -> None:
    big, small = (0x16 << 32) | 0xB374D848, 0x40

    def body() -> tuple[str | None, list[int], list[int], list[int]]:
        record_write(lsn=big, cluster="7001")
        record_write(lsn=small, cluster="7002")
        record_write(lsn=small, cluster="7001")  # never lowers 7001's
        floor = current_floor()
        assert floor is not None
        return (
            current_causal_token(),
            floor.needs({"7001"}),
            floor.needs({"7002"}),
            floor.needs({"7003"}),  # a cluster this context never wrote to
        )

    token, first, second, other = run_fresh(body)
    assert (first, second, other) == ([big], [small], [])
    assert token is not None and token.startswith("pg:16/B374D848~7001~")

    def read_back() -> tuple[list[int], list[int]]:
        with causal_token(token):
            floor = current_floor()
            assert floor is not None
            return floor.needs({"7001"}), floor.needs({"7002"})

    assert run_fresh(read_back) == ([big], [small])


def test_a_token_of_another_cluster_is_unknown_for_a_while_not_for_ever() -> None:
    def body() -> str | None:
        record_write(lsn=0x40, cluster="7001")
        return current_causal_token()

    token = run_fresh(body)
    assert token is not None

    def judged() -> tuple[bool, bool, bool, list[int]]:
        with causal_token(token):
            floor = current_floor()
            assert floor is not None
            now = time.time()
            return (
                floor.told_elsewhere({"7002"}, now, 2.0),  # a switch just now
                floor.told_elsewhere({"7002"}, now + 3.0, 2.0),  # window over
                floor.told_elsewhere({"7001"}, now, 2.0),  # its own cluster
                floor.needs({"7002"}),
            )

    assert run_fresh(judged) == (True, False, False, [])

    def own_writes() -> bool:
        # A write this context made (not a token it was given) on another
        # cluster says nothing about this one: two databases in one request.
        record_write(lsn=0x40, cluster="7001")
        floor = current_floor()
        assert floor is not None
        return floor.told_elsewhere({"7002"}, time.time(), 2.0)

    assert run_fresh(own_writes) is False


def test_old_tokens_count_on_every_cluster() -> None:
    def body() -> tuple[list[int], list[int]]:
        with causal_token("pg:0/40"):
            floor = current_floor()
            assert floor is not None
            return floor.needs({"7001"}), floor.needs(None)

    assert run_fresh(body) == ([0x40], [0x40])


@pytest.mark.parametrize(
    "bad", ["pg:0/1~7001", "pg:0/1~7001~", "pg:0/1~a b~1", "pg:0/1~7001~x"]
)
def test_malformed_cluster_parts_are_refused(bad: str) -> None:
    with pytest.raises(ConfigurationError, match="causal token"):
        causal_token(bad)
