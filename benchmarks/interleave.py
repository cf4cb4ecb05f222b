"""Interleaved timing of variants, repeated in fresh processes.

Within a process the variants take turns select by select, in a fresh random
order each time, so drift on a shared 2-core machine hits them all alike. A
process's own layout (hash seed, addresses, method-cache collisions) still
moves one variant against another by a few percent, and that does not
average out inside the process; as pyperf does, each repetition runs in a new
process with its own ``PYTHONHASHSEED``, and ratios are taken per process.

The child side: ``python -m benchmarks.interleave PAIR SELECTS SEED`` with
the cluster's URLs in ``ROUTING_DB_BENCH_URLS``; it prints one JSON line.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import statistics
import subprocess
import sys
import time

from routing_db.testing import PostgresCluster

from .variants import PAIRS, VARIANTS, Op, Variant, warm_up

__all__ = ["in_processes", "interleave"]

_URLS = "ROUTING_DB_BENCH_URLS"


async def interleave(
    cluster: PostgresCluster, variants: dict[str, Variant], selects: int, seed: int
) -> dict[str, float]:
    """Median µs per select of each variant, timed turn by turn."""
    rng = random.Random(seed)
    async with contextlib.AsyncExitStack() as stack:
        ops: dict[str, Op] = {}
        for name, variant in variants.items():
            ops[name] = await stack.enter_async_context(variant(cluster))
            await warm_up(ops[name], rng)
        times: dict[str, list[float]] = {name: [] for name in ops}
        order = list(ops)
        for _ in range(selects):
            rng.shuffle(order)
            row_id = rng.randint(1, 1000)
            for name in order:
                start = time.perf_counter()
                await ops[name](row_id)
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) * 1e6 for name, values in times.items()}


def in_processes(
    cluster: PostgresCluster, pair: str, *, processes: int, selects: int
) -> list[dict[str, float]]:
    """``interleave`` of a pair in ``processes`` fresh interpreters, seeds 1..n."""
    urls = json.dumps([cluster.writer_url, *cluster.replica_urls])
    runs = []
    for seed in range(1, processes + 1):
        env = {**os.environ, "PYTHONHASHSEED": str(seed), _URLS: urls}
        command = [sys.executable, "-m", "benchmarks.interleave", pair]
        done = subprocess.run(
            [*command, str(selects), str(seed)],
            env=env,
            capture_output=True,
            text=True,
            check=False,
            timeout=1800,
        )
        if done.returncode != 0:
            raise RuntimeError(f"interleave {pair} seed {seed}:\n{done.stderr}")
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
    return runs


def main() -> None:
    pair, selects, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    writer, *replicas = json.loads(os.environ[_URLS])
    cluster = PostgresCluster.external(writer, replicas)
    variants = {name: VARIANTS[name] for name in PAIRS[pair]}
    result = asyncio.run(interleave(cluster, variants, selects, seed))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
