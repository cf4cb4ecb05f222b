"""The read bounds' own bookkeeping, both faces (no server needed)."""

from __future__ import annotations

import asyncio
import gc
import threading
import time
import weakref
from typing import Any

from routing_db._bounds.past_bound import sweep_interval, swept
from routing_db._bounds.read_timeout import Watchdog
from routing_db._bounds.thread_read_timeout import Sweeper


class _Bound:
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.expired: list[Any] = []
        self.cut = threading.Event()

    def expire(self, connection: Any) -> None:
        self.expired.append(connection)
        self.cut.set()


class _Connection:
    routing_db_since: float | None = None

    def __init__(self, bound: _Bound) -> None:
        self.routing_db_bound = bound


def test_a_statement_past_its_bound_is_cut_once() -> None:
    bound = _Bound(0.1)
    running, idle, recent = _Connection(bound), _Connection(bound), _Connection(bound)
    now = time.monotonic()
    running.routing_db_since = now - 1.0  # past 0.1 s
    recent.routing_db_since = now - 0.05
    swept([running, idle, recent], now)
    swept([running, idle, recent], now)  # once cut, not again
    assert bound.expired == [running]
    assert running.routing_db_since is None
    assert recent.routing_db_since is not None


def test_a_bound_is_looked_at_ten_times_within_it() -> None:
    assert sweep_interval(2.0) == 0.2
    assert sweep_interval(0.1) == 0.05  # not a busy loop
    assert sweep_interval(60.0) == 1.0  # a new bound is not waited for long


def test_the_watchdog_keeps_no_event_loop_alive() -> None:
    # An application's tests run a loop each: none may be kept after it closed.
    watchdog = Watchdog()
    loops = []
    for _ in range(3):
        loop = asyncio.new_event_loop()
        connection = _Connection(_Bound(1.0))

        async def watched(connection: _Connection = connection) -> None:
            watchdog.watch(connection, 0.1)
            await asyncio.sleep(0)

        loop.run_until_complete(watched())
        loop.close()
        loops.append(weakref.ref(loop))
        del loop
    gc.collect()
    assert [ref() for ref in loops] == [None, None, None]


async def test_the_watchdog_sweeps_on_its_loop_until_closed() -> None:
    watchdog = Watchdog()
    bound = _Bound(0.05)
    connection = _Connection(bound)
    watchdog.watch(connection, 0.05)
    connection.routing_db_since = time.monotonic() - 1.0
    await asyncio.wait_for(asyncio.to_thread(bound.cut.wait), 5)
    assert bound.expired == [connection]
    watchdog.close()
    await asyncio.sleep(0.1)  # the timer's turn after close() ends it
    connection.routing_db_since = time.monotonic() - 1.0
    await asyncio.sleep(0.2)
    assert bound.expired == [connection]  # not swept any more


def test_the_sweeper_thread_sweeps_and_ends_when_closed() -> None:
    sweeper = Sweeper()
    bound = _Bound(0.05)
    connection = _Connection(bound)
    sweeper.watch(connection, 0.05)
    connection.routing_db_since = time.monotonic() - 1.0
    assert bound.cut.wait(5)
    assert bound.expired == [connection]
    sweeper.close()
    assert not any(t.name == "routing_db read timeout" for t in threading.enumerate())
