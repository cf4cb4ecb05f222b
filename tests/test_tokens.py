"""Combining causal tokens, adopting one mid-flow, and which one a request
carries (no server needed)."""

from __future__ import annotations

import contextvars

import pytest

from routing_db import (
    ConfigurationError,
    adopt_token,
    causal_token,
    current_causal_token,
    newest_token,
)
from routing_db._causal.floor import current_floor
from routing_db._causal.http import given_token

OLD, NEW = "pg:0/100~c1~1.000", "pg:0/200~c1~2.000"
OTHER = "pg:0/50~c2~1.500"


def positions(token: str | None) -> dict[str, int]:
    with causal_token(token):
        floor = current_floor()
        assert floor is not None
        return {cluster: mark.position for cluster, mark in floor.marks.items()}


def test_the_newest_token_covers_each_cluster_s_newest_position() -> None:
    assert positions(newest_token(OLD, NEW)) == {"c1": 0x200}
    assert positions(newest_token(NEW, OLD)) == {"c1": 0x200}
    assert positions(newest_token(OLD, None, OTHER)) == {"c1": 0x100, "c2": 0x50}
    assert newest_token(None, None) is None
    assert newest_token() is None
    with pytest.raises(ConfigurationError):
        newest_token(OLD, "not a token")


def test_adopting_a_token_raises_the_floor_and_never_lowers_it() -> None:
    def flow() -> None:
        assert current_causal_token() is None
        adopt_token(NEW)
        assert positions(current_causal_token()) == {"c1": 0x200}
        adopt_token(OLD)  # older: changes nothing
        adopt_token(None)
        assert positions(current_causal_token()) == {"c1": 0x200}
        adopt_token(OTHER)
        assert positions(current_causal_token()) == {"c1": 0x200, "c2": 0x50}

    contextvars.Context().run(flow)
    assert current_causal_token() is None  # it stayed in that context


@pytest.mark.parametrize(
    ("header", "cookie", "expected"),
    [(OLD, NEW, 0x200), (NEW, OLD, 0x200), (None, NEW, 0x200), (NEW, None, 0x200)],
)
def test_a_request_s_token_is_the_newest_of_header_and_cookie(
    header: str | None, cookie: str | None, expected: int
) -> None:
    headers = []
    if header is not None:
        headers.append(("X-Routing-DB-Token", header))
    if cookie is not None:
        headers.append(("cookie", f"theme=dark; rdb={cookie}"))
    token = given_token(headers, "x-routing-db-token", "rdb")
    assert positions(token) == {"c1": expected}


def test_without_a_cookie_name_only_the_header_counts() -> None:
    headers = [("x-routing-db-token", OLD), ("cookie", f"rdb={NEW}")]
    assert given_token(headers, "x-routing-db-token", None) == OLD
