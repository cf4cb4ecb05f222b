"""The causal store's outage rules, on a store that fails on demand (the
real Redis, down and back, is in test_redis_pg)."""

from __future__ import annotations

import logging

import pytest

from routing_db._causal.floor import CausalFloor
from routing_db._causal.store import CAUSAL_KEY, UNKNOWN, SharedFloors, causal_key


class Flaky:
    """Positions in a dict; ``down`` makes every call fail."""

    ttl = 0.0  # positions missed in an outage are not waited out here

    def __init__(self) -> None:
        self.kept: dict[str, CausalFloor] = {}
        self.down = False
        self.calls = 0

    def load(self, key: str) -> CausalFloor | None:
        self.calls += 1
        if self.down:
            raise ConnectionError("down")
        return self.kept.get(key)

    def save(self, key: str, floor: CausalFloor) -> None:
        self.calls += 1
        if self.down:
            raise ConnectionError("down")
        old = self.kept.get(key)
        if old is None or (floor.lsn or 0) > (old.lsn or 0):
            self.kept[key] = floor


def test_an_outage_reads_home_logs_once_and_saves_what_it_missed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = Flaky()
    shared = SharedFloors(store, retry_seconds=3600)
    shared.wrote("ann", CausalFloor(10))
    assert shared.floor("ann").lsn == 10  # type: ignore[union-attr]
    store.down = True
    with caplog.at_level(logging.WARNING, logger="routing_db"):
        assert shared.floor("ann") is UNKNOWN
        calls = store.calls
        for lsn in (30, 20):  # an older save after a newer one
            shared.wrote("ann", CausalFloor(lsn))
        assert shared.floor("ann") is UNKNOWN
        assert store.calls == calls  # not asked again within retry_seconds
    assert [r.getMessage().count("cannot be reached") for r in caplog.records] == [1]
    store.down = False
    shared._retry_at = 0.0  # the retry is due (retry_seconds has passed)
    assert shared.floor("bob") is None
    # What failed during the outage was saved, the newest of it.
    assert store.kept["ann"].lsn == 30


def test_a_pending_flood_is_saved_a_few_at_a_time() -> None:
    store = Flaky()
    shared = SharedFloors(store, retry_seconds=0)
    store.down = True
    for n in range(100):
        shared.wrote(f"user{n}", CausalFloor(n + 1))
    store.down = False
    calls = store.calls
    shared.floor("someone")
    assert store.calls - calls <= 21  # the load, and at most 20 saves
    for _ in range(10):
        shared.floor("someone")
    assert len(store.kept) == 100


async def test_causal_key_is_a_scope_for_sync_and_async_code() -> None:
    @causal_key("ann")
    async def inside() -> str | None:
        return CAUSAL_KEY.get()

    assert await inside() == "ann"
    with causal_key(42):
        assert CAUSAL_KEY.get() == "42"
        async with causal_key("bob"):
            assert CAUSAL_KEY.get() == "bob"
        assert CAUSAL_KEY.get() == "42"
    assert CAUSAL_KEY.get() is None
