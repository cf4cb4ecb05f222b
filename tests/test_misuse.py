"""RoutingDBWarning: routers over the same URLs opened over and over."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from routing_db import Router, RoutingDBWarning
from routing_db._decide.misuse import OPEN_ROUTERS_WARNING, Openings


@pytest.fixture
def url(tmp_path: Path) -> Iterator[str]:
    # A URL of this test's own: the process-wide count starts at 0 for it.
    yield f"sqlite+aiosqlite:///{tmp_path / 'app.db'}"


def open_routers(url: str, n: int) -> list[Router]:
    return [Router.from_urls(url) for _ in range(n)]


async def test_a_router_per_request_is_named_once(url: str) -> None:
    routers = open_routers(url, OPEN_ROUTERS_WARNING - 1)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        routers += open_routers(url, 5)
    try:
        (warning,) = seen  # once, not at every later router
        assert warning.category is RoutingDBWarning
        assert issubclass(RoutingDBWarning, UserWarning)
        assert "routers over sqlite+aiosqlite" in str(warning.message)
        assert "dispose()" in str(warning.message)
        assert warning.filename == __file__  # points at the code that made them
    finally:
        for router in routers:
            await router.dispose()


async def test_disposed_routers_do_not_count(url: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", RoutingDBWarning)
        for _ in range(OPEN_ROUTERS_WARNING * 2):
            async with Router.from_urls(url):
                pass
        router = Router.from_urls(url)  # disposed, started again: one router
        await router.dispose()
        await router.start()
        await router.dispose()
        await router.dispose()  # twice: still counted once


def test_the_count_is_per_set_of_urls() -> None:
    openings = Openings(limit=3)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        for urls in (("a",), ("b",), ("a",), ("b",)):
            openings.opened(urls)
        assert seen == []
        openings.closed(("a",))
        openings.opened(("a",))
        assert seen == []
        openings.opened(("a",))
        assert len(seen) == 1
        assert "a" in str(seen[0].message)
