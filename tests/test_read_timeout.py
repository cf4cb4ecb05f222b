"""The read-timeout watchdog's own bookkeeping (no server needed)."""

from __future__ import annotations

import asyncio
import gc
import time
import weakref

import pytest

from routing_db._bounds import read_timeout as _read_timeout


class _Connection:
    routing_db_since: float | None = None


def test_a_watchdog_keeps_no_event_loop_alive() -> None:
    # An application's tests run a loop each: none may be kept after it closed.
    loops = []
    for _ in range(3):
        loop = asyncio.new_event_loop()
        watchdog = _read_timeout._Watchdog(loop)
        _read_timeout._watchdogs[loop] = watchdog
        connection = _Connection()

        async def watched(
            watchdog: _read_timeout._Watchdog = watchdog,
            connection: _Connection = connection,
        ) -> None:
            watchdog.watch(connection, 1.0)
            await asyncio.sleep(0)

        loop.run_until_complete(watched())
        loop.close()
        loops.append(weakref.ref(loop))
        del loop, watchdog
    gc.collect()
    assert [ref() for ref in loops] == [None, None, None]


def test_a_statement_past_its_bound_is_cut_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cut: list[object] = []
    monkeypatch.setattr(_read_timeout, "_expire", lambda c, s: cut.append(c))

    async def run() -> None:
        watchdog = _read_timeout._Watchdog(asyncio.get_running_loop())
        running, idle = _Connection(), _Connection()
        watchdog.watch(running, 0.1)
        watchdog.watch(idle, 0.1)
        running.routing_db_since = time.monotonic() - 1.0  # past 0.1 s
        watchdog._sweep()
        watchdog._sweep()  # once cut, not again
        assert cut == [running]
        assert running.routing_db_since is None

    asyncio.run(run())
