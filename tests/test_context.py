"""read_only / use_writer scopes: forms, nesting, tasks, no leaks."""

import asyncio
import threading

import pytest

from routing_db import read_only, use_writer
from routing_db._decide.context import Scope, current_scope


def test_default_is_no_scope() -> None:
    assert current_scope() is Scope.NONE


@pytest.mark.parametrize("marker", [read_only, read_only()])
def test_with_forms(marker: object) -> None:
    with marker:  # type: ignore[attr-defined]
        assert current_scope() is Scope.READ_ONLY
    assert current_scope() is Scope.NONE


async def test_async_with_forms() -> None:
    async with read_only:
        assert current_scope() is Scope.READ_ONLY
        async with use_writer():
            assert current_scope() is Scope.WRITER
        assert current_scope() is Scope.READ_ONLY
    assert current_scope() is Scope.NONE


def test_sync_decorators() -> None:
    @read_only
    def bare() -> Scope:
        return current_scope()

    @use_writer()
    def called() -> Scope:
        return current_scope()

    assert bare() is Scope.READ_ONLY
    assert called() is Scope.WRITER
    assert bare.__name__ == "bare"
    assert current_scope() is Scope.NONE


async def test_async_decorators() -> None:
    @read_only
    async def bare() -> Scope:
        await asyncio.sleep(0)
        return current_scope()

    @use_writer
    async def writer() -> Scope:
        return current_scope()

    assert asyncio.iscoroutinefunction(bare)
    assert await bare() is Scope.READ_ONLY
    assert await writer() is Scope.WRITER
    assert current_scope() is Scope.NONE


def test_scope_is_reset_when_the_body_raises() -> None:
    @read_only
    def boom() -> None:
        raise KeyError("x")

    with pytest.raises(KeyError):
        boom()
    assert current_scope() is Scope.NONE
    with pytest.raises(KeyError), use_writer:
        raise KeyError("y")
    assert current_scope() is Scope.NONE


def test_use_writer_wins_over_read_only_at_any_depth() -> None:
    with use_writer:
        with read_only:
            assert current_scope() is Scope.WRITER
            with read_only:
                assert current_scope() is Scope.WRITER
        assert current_scope() is Scope.WRITER
    with read_only:
        with use_writer:
            assert current_scope() is Scope.WRITER
        assert current_scope() is Scope.READ_ONLY


async def test_tasks_inherit_and_do_not_leak() -> None:
    seen: dict[str, Scope] = {}

    async def child(name: str) -> None:
        seen[name] = current_scope()
        with use_writer:  # must not change the parent's scope
            await asyncio.sleep(0)

    async with read_only:
        await asyncio.create_task(child("inside"))
        assert current_scope() is Scope.READ_ONLY
    await asyncio.create_task(child("outside"))
    assert seen == {"inside": Scope.READ_ONLY, "outside": Scope.NONE}


async def test_concurrent_tasks_using_the_same_marker_do_not_mix() -> None:
    barrier = asyncio.Event()
    results: list[tuple[Scope, Scope]] = []

    async def worker(i: int) -> None:
        marker = read_only if i % 2 else use_writer
        async with marker:
            inside = current_scope()
            if i == 49:
                barrier.set()
            await barrier.wait()  # every task is inside its scope at once
            await asyncio.sleep(0)
            results.append((inside, current_scope()))
        assert current_scope() is Scope.NONE

    await asyncio.gather(*(worker(i) for i in range(50)))
    assert len(results) == 50
    assert all(before is after for before, after in results)
    assert {before for before, _ in results} == {Scope.READ_ONLY, Scope.WRITER}


def test_threads_do_not_see_each_others_scope() -> None:
    seen: list[Scope] = []
    with read_only:
        thread = threading.Thread(target=lambda: seen.append(current_scope()))
        thread.start()
        thread.join()
    assert seen == [Scope.NONE]
