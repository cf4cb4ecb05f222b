"""Turn a pytest-benchmark JSON file into benchmarks/RESULTS.md and a plot.

python -m benchmarks.report benchmarks/results.json

Everything it reports comes from the JSON file (each benchmark's extra_info);
the goals come from ``goals.py``.
"""

from __future__ import annotations

import json
import platform
import statistics
import sys
from pathlib import Path
from typing import Any

import sqlalchemy

from routing_db.loadtest import LoadSummary, plot_summaries

from . import goals

HERE = Path(__file__).parent
Ratio = tuple[float, float, float]  # median, lowest, highest

# Pair (variants.PAIRS) -> what it compares, a / b.
_OVERHEAD = {
    "writer_vs_plain": "RoutingSession, default role (writer) / plain AsyncSession",
    "read_only_vs_plain_replicas": "RoutingSession, read_only / plain AsyncSession "
    "on the same replicas (in turn)",
    "writer_vs_raw": "RoutingSession, default role / raw asyncpg "
    "(pool.acquire + fetchrow)",
    "plain_vs_raw": "plain AsyncSession / raw asyncpg",
    "writer_vs_peer": "RoutingSession, default role / advanced-alchemy, "
    "primary_context",
    "read_only_vs_peer": "RoutingSession, read_only / advanced-alchemy, "
    "replica_context",
    "control_a_a": "A/A control: RoutingSession, read_only / a copy of itself",
    "read_timeout_vs_none": "RoutingSession, read_only with `replica_read_timeout` "
    "(the default) / without (what the bound costs)",
}
_CHECKOUT = {
    "idle_check_vs_none": "routing_db idle check (the default) / no check",
    "pre_ping_vs_none": "SQLAlchemy `pool_pre_ping` / no check",
}
# ratio a / b, and the median µs per select of a and of b
Pair = tuple[Ratio, float, float]


def _met(ok: bool) -> str:
    return "met" if ok else "**not met**"


def _stats(values: list[float]) -> Ratio:
    return statistics.median(values), min(values), max(values)


def _spread(ratio: Ratio, over: str = "processes", digits: int = 3) -> str:
    median, low, high = (f"{value:.{digits}f}" for value in ratio)
    return f"{median}x ({over} {low} to {high})"


def _pairs(benches: dict[str, dict[str, Any]]) -> dict[str, Pair]:
    """Each pair's ratio, taken within each process, then over processes."""
    pairs = {}
    for name, bench in benches.items():
        if name.startswith("test_pair["):
            info = bench["extra_info"]
            a, b = info["pair"]
            ratio = _stats([run[a] / run[b] for run in info["per_process"]])
            micros = info["median_us_per_select"]
            pairs[name[len("test_pair[") : -1]] = (ratio, micros[a], micros[b])
    return pairs


def _pair_table(
    pairs: dict[str, Pair], labels: dict[str, str], resolution: float
) -> list[str]:
    lines = [
        "| a / b | µs a | µs b | a / b: median (processes) | goal |",
        "|---|---:|---:|---:|---|",
    ]
    for name, label in labels.items():
        if name not in pairs:
            continue
        ratio, a, b = pairs[name]
        goal = ""
        if name in goals.LIMITS:
            limit = goals.LIMITS[name]
            met = ratio[0] <= limit + max(goals.MARGIN, resolution)
            goal = f"≤ {limit:.2f}x: {_met(met)}"
        lines.append(f"| {label} | {a:.0f} | {b:.0f} | {_spread(ratio)} | {goal} |")
    return lines


def _resolution(pairs: dict[str, Pair]) -> float:
    """How far apart the A/A control measured identical code (0 if not run)."""
    if "control_a_a" not in pairs:
        return 0.0
    _, low, high = pairs["control_a_a"][0]
    return max(abs(low - 1), abs(high - 1))


def _overhead(pairs: dict[str, Pair]) -> list[str]:
    if not pairs:
        return ["Not run."]
    resolution = _resolution(pairs)
    lines = [
        "Each row is one pair timed head to head: a and b alone, select by "
        "select in turn, in 5 fresh processes; the ratio is taken within each "
        "process, then the median over processes (range in brackets). The "
        "read_only rows and the A/A control run with `replica_read_timeout` "
        "off, like the plain session and the peer; the last row is what the "
        "bound, on by default, adds.",
        "",
        *_pair_table(pairs, _OVERHEAD, resolution),
        "",
        f"The A/A control measured identical code up to {resolution * 100:.1f}% "
        "apart. A median counts as over its goal only when it is over by more "
        f"than {goals.MARGIN * 100:.0f}% or than that spread, whichever is wider.",
    ]
    if "writer_vs_peer" not in pairs:
        lines.append("The peer comparison did not run (it needs SQLAlchemy 2.0).")
    return lines


def _load_table(summaries: list[tuple[str, LoadSummary]]) -> list[str]:
    lines = [
        "| run | workers | ops/s | p50 ms | p99 ms | checkout wait p99 ms "
        "| timeouts | client cpu | where |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for label, s in summaries:
        where = ", ".join(f"{e.role} {e.operations}" for e in s.engines if e.operations)
        lines.append(
            f"| {label} | {s.concurrency} | {s.throughput:.0f} | "
            f"{s.latency_ms.p50:.1f} | {s.latency_ms.p99:.1f} | "
            f"{s.checkout_wait_ms.p99:.1f} | {s.timeouts} | {s.client_cpu:.2f} "
            f"| {where} |"
        )
    return lines


def _summaries(
    benches: dict[str, dict[str, Any]], prefix: str
) -> list[tuple[str, LoadSummary]]:
    return [
        (
            name[name.index("[") + 1 : -1],
            LoadSummary.model_validate(bench["extra_info"]["summary"]),
        )
        for name, bench in sorted(benches.items())
        if name.startswith(prefix)
    ]


def _median_run(runs: list[LoadSummary]) -> LoadSummary:
    return sorted(runs, key=lambda s: s.throughput)[(len(runs) - 1) // 2]


def _capacity(bench: dict[str, Any] | None) -> list[str]:
    if bench is None:
        return ["Not run."]
    info = bench["extra_info"]
    rounds = [
        {key: LoadSummary.model_validate(run) for key, run in r.items()}
        for r in info["rounds"]
    ]
    rows = [
        (label, _median_run([r[label] for r in rounds])) for label in info["configs"]
    ]
    base, only, shared = info["baseline"], info["replicas_only"], info["shared"]

    def times(label: str) -> Ratio:
        return _stats([r[label].throughput / r[base].throughput for r in rounds])

    client = _median_run([r[shared] for r in rounds]).client_cpu
    return [
        f"{info['io_ms']} ms on the server per read. {len(rounds)} rounds; in "
        f"each, every configuration runs {info['run_seconds']:g} s, in a new "
        "random order. A row is the configuration's median round; ratios are "
        "taken within each round. With `writer_read_weight=1` the writer takes "
        "an equal share of the reads (in READ ONLY transactions).",
        "",
        *_load_table(rows),
        "",
        f"Throughput x {base}: {only} {_spread(times(only), 'rounds', 2)}; "
        f"{shared} {_spread(times(shared), 'rounds', 2)} — goal "
        f"≥ {goals.CAPACITY}x: {_met(times(shared)[0] >= goals.CAPACITY)} (the "
        f"client used {client:.2f} of a core).",
    ]


def _skew(skew: list[tuple[str, LoadSummary]]) -> list[str]:
    p99 = {label: s.latency_ms.p99 for label, s in skew}
    if set(p99) != {"least_busy", "round_robin"}:
        return _load_table(skew)
    ratio = p99["least_busy"] / p99["round_robin"]
    return [
        *_load_table(skew),
        "",
        f"p99 least_busy / round_robin: {ratio:.2f}x — goal ≤ {goals.SKEW}x: "
        f"{_met(ratio <= goals.SKEW)}.",
    ]


def _failover(benches: dict[str, dict[str, Any]]) -> list[str]:
    runs = {
        fault: benches[f"test_failover_window[{fault}]"]["extra_info"]
        for fault in ("crash", "hang")
        if f"test_failover_window[{fault}]" in benches
    }
    if not runs:
        return ["Not run."]
    lines = [
        f"{len(next(iter(runs.values()))['rounds'])} failovers each: the primary "
        "crashes, or hangs (SIGSTOP: a host behind a partition), under 5 writer "
        "tasks through `Router.from_cluster` (`monitor_interval="
        f"{next(iter(runs.values()))['monitor_interval']:g}`), and replica 0 is "
        "promoted at once. Medians, with the range over failovers.",
        "",
        "| primary | first write after `promote` returned | writes unavailable "
        "since the fault (promotion included) |",
        "|---|---|---|",
    ]
    for fault, info in runs.items():
        after = _stats([r["after_promote"] for r in info["rounds"]])
        since = _stats([r["since_crash"] for r in info["rounds"]])
        lines.append(
            f"| {'crashed' if fault == 'crash' else 'hung'} "
            f"| {after[0]:.2f} s ({after[1]:.2f} to {after[2]:.2f}) "
            f"| {since[0]:.2f} s ({since[1]:.2f} to {since[2]:.2f}) |"
        )
    return lines


def _hung(bench: dict[str, Any] | None) -> list[str]:
    if bench is None:
        return ["Not run."]
    info = bench["extra_info"]
    healthy, hung = info["phases"]["healthy"], info["phases"]["hung"]
    rate = hung["reads_per_second"] / healthy["reads_per_second"]
    return [
        f"{info['readers']} reader tasks; replica 0 stopped (SIGSTOP) under them; "
        f"`replica_read_timeout={info['replica_read_timeout']:g}`.",
        "",
        "| phase | read p99 | slowest read | reads/s |",
        "|---|---|---|---|",
        *(
            f"| {name} | {p['p99'] * 1000:.1f} ms | {p['max'] * 1000:.0f} ms "
            f"| {p['reads_per_second']:.0f} |"
            for name, p in (("healthy", healthy), ("hung", hung))
        ),
        "",
        f"p99 hung / healthy: {hung['p99'] / healthy['p99']:.1f}x; throughput "
        f"hung / healthy: {rate:.2f}.",
    ]


def main(path: str) -> None:
    """Write RESULTS.md and starvation.png from the JSON at ``path``."""
    data = json.loads(Path(path).read_text())
    benches = {bench["name"]: bench for bench in data["benchmarks"]}
    pairs = _pairs(benches)
    starvation = [
        ("short sessions" if "point_read" in name else "held 50 ms", summary)
        for name, summary in _summaries(benches, "test_pool_starvation[")
    ]
    starvation.sort(key=lambda item: (item[0], item[1].concurrency))
    plot_summaries(starvation, str(HERE / "starvation.png"))
    machine = data.get("machine_info", {}).get("cpu", {})
    out = [
        "# Benchmark results",
        "",
        "From **one** run of `make bench` on the machine described at the end "
        "(2 cores shared by the client, the primary and two replicas): compare "
        "ratios, not absolute times. How each is measured: "
        "[README.md](README.md).",
        "",
        "## 1. Routing overhead: ORM point select, fresh session each",
        "",
        *_overhead(pairs),
        "",
        "## 2. Pool starvation: pool 5+0, pool_timeout 2 s, plain AsyncSession",
        "",
        "![throughput, p99 latency and checkout wait against workers](starvation.png)",
        "",
        *_load_table(starvation),
        "",
        "Sessions held across an await drain the pool: checkout waits grow to "
        "`pool_timeout` and requests fail, while short sessions serve the same "
        "workers with no timeout.",
        "",
        "## 3. Replica capacity: IO-bound reads, pool 5 per engine, 40 workers",
        "",
        *_capacity(benches.get("test_replica_capacity")),
        "",
        "## 4. Skew: one replica answers in 50 ms, the other in 5 ms",
        "",
        *_skew(_summaries(benches, "test_slow_replica_skew[")),
        "",
        "## 5. Checkout cost: ORM point select through the router's writer",
        "",
        *(_pair_table(pairs, _CHECKOUT, _resolution(pairs)) if pairs else ["Not run."]),
        "",
        "## 6. Failover: writes unavailable after a promotion",
        "",
        *_failover(benches),
        "",
        "## 7. A hung replica: read latency while it stops answering",
        "",
        *_hung(benches.get("test_hung_replica")),
        "",
        "## Machine",
        "",
        f"- {machine.get('brand_raw', platform.processor())}, "
        f"{machine.get('count', '?')} cores; Python {platform.python_version()}; "
        f"SQLAlchemy {sqlalchemy.__version__}; run at {data.get('datetime', '?')}",
        "",
    ]
    (HERE / "RESULTS.md").write_text("\n".join(out))
    print(f"wrote {HERE / 'RESULTS.md'} and {HERE / 'starvation.png'}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else str(HERE / "results.json"))
