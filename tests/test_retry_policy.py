"""The tenacity policy object (no database, no sleeping)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from sqlalchemy.util import greenlet_spawn
from tenacity import wait_none

from routing_db import ConfigurationError, RetryPolicy


class Flaky(Exception):
    pass


def is_flaky(error: BaseException) -> bool:
    return isinstance(error, Flaky)


def flaky(failures: int) -> tuple[list[int], Callable[[], str]]:
    calls: list[int] = []

    def fn() -> str:
        calls.append(1)
        if len(calls) <= failures:
            raise Flaky
        return "ok"

    return calls, fn


async def test_call_retries_up_to_attempts() -> None:
    policy = RetryPolicy(attempts=3, wait=wait_none())
    calls, fn = flaky(2)
    result = await greenlet_spawn(
        policy.call, fn, retry_if=lambda e: isinstance(e, Flaky)
    )
    assert result == "ok" and len(calls) == 3

    calls, fn = flaky(3)
    with pytest.raises(Flaky):  # reraise=True: the error itself, not RetryError
        await greenlet_spawn(policy.call, fn, retry_if=is_flaky)
    assert len(calls) == 3


async def test_call_does_not_retry_other_errors() -> None:
    policy = RetryPolicy(attempts=5, wait=wait_none())
    calls, fn = flaky(1)
    with pytest.raises(Flaky):
        await greenlet_spawn(policy.call, fn, retry_if=lambda e: False)
    assert len(calls) == 1


async def test_asynchronous_form() -> None:
    policy = RetryPolicy(attempts=4, wait=wait_none())
    calls, fn = flaky(3)
    async for attempt in policy.asynchronous(is_flaky):
        with attempt:
            result = fn()
    assert result == "ok" and len(calls) == 4


def test_attempts_must_be_positive() -> None:
    with pytest.raises(ConfigurationError):
        RetryPolicy(attempts=0)
