"""Python work per select: the bytecode instructions a variant runs, counted.

Timed ratios a fraction of a percent apart are at the resolution of timing
(code layout alone moves them that much); the number of bytecode
instructions the interpreter runs per select is the same in every run, so
RESULTS.md shows it beside the times. It counts Python work only: C code (the
driver's protocol parsing, the interpreter's own dictionary lookups) and time
spent waiting on the server are not in it.
"""

from __future__ import annotations

import contextlib
import random
import sys
from types import FrameType
from typing import Any

import pytest

from routing_db.testing import PostgresCluster

from .conftest import ROWS
from .variants import Op, Variant, one_round

__all__ = ["bytecodes_per_select"]


async def _count(op: Op, selects: int, rng: random.Random) -> float:
    count = 0

    def trace(frame: FrameType, event: str, arg: Any) -> Any:
        nonlocal count
        frame.f_trace_opcodes = True
        if event == "opcode":
            count += 1
        return trace

    row_ids = [rng.randint(1, ROWS) for _ in range(selects)]
    sys.settrace(trace)
    try:
        for row_id in row_ids:
            await op(row_id)
    finally:
        sys.settrace(None)
    return count / selects


async def bytecodes_per_select(
    cluster: PostgresCluster, variants: dict[str, Variant], selects: int
) -> dict[str, float]:
    """Mean bytecode instructions per select of each variant, after a warm-up."""
    counts: dict[str, float] = {}
    for name, variant in variants.items():
        rng = random.Random(7)
        async with contextlib.AsyncExitStack() as stack:
            try:
                op = await stack.enter_async_context(variant(cluster))
            except pytest.skip.Exception:
                continue
            await one_round(op, rng)  # warm up pools, caches and the interpreter
            counts[name] = await _count(op, selects, rng)
    return counts
