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

_VARIANTS = {
    "raw_asyncpg": "raw asyncpg (pool.acquire + fetchrow)",
    "plain_async_session": "plain AsyncSession (writer)",
    "plain_async_session_replica": "plain AsyncSession on the replicas (in turn)",
    "routing_session_writer": "RoutingSession, default role (writer)",
    "routing_session_read_only_replica": "RoutingSession, read_only (replica)",
    "advanced_alchemy_writer": "advanced-alchemy, primary_context (writer)",
    "advanced_alchemy_replica": "advanced-alchemy, replica_context (replica)",
}


def _met(ok: bool) -> str:
    return "met" if ok else "**not met**"


def _runs(bench: dict[str, Any] | None) -> list[dict[str, float]]:
    """Median µs per select of each variant, one dict per process."""
    return [] if bench is None else bench["extra_info"]["per_process"]


def _stats(values: list[float]) -> Ratio:
    return statistics.median(values), min(values), max(values)


def _ratio(runs: list[dict[str, float]], a: str, b: str) -> Ratio | None:
    """a / b within each process, then over processes; None if not measured."""
    values = [run[a] / run[b] for run in runs if a in run and b in run]
    return _stats(values) if values else None


def _spread(ratio: Ratio, over: str = "processes", digits: int = 3) -> str:
    median, low, high = (f"{value:.{digits}f}" for value in ratio)
    return f"{median}x ({over} {low} to {high})"


def _overhead(benches: dict[str, dict[str, Any]]) -> list[str]:
    runs = _runs(benches.get("test_overhead_interleaved"))
    if not runs:
        return ["Not run."]
    lines = [
        f"{len(runs)} processes, each timing "
        f"{benches['test_overhead_interleaved']['extra_info']['selects_per_process']:,}"
        " selects per variant in turn; ratios are taken within each process, "
        "then the median over processes (range in brackets).",
        "",
        "| variant | µs per select | x plain AsyncSession | x raw asyncpg |",
        "|---|---:|---:|---:|",
    ]
    for key, label in _VARIANTS.items():
        plain = _ratio(runs, key, "plain_async_session")
        raw = _ratio(runs, key, "raw_asyncpg")
        if plain is None or raw is None:
            continue
        micros = statistics.median(run[key] for run in runs)
        lines.append(f"| {label} | {micros:.0f} | {plain[0]:.3f} | {raw[0]:.2f} |")
    pairs = {
        name[name.index("[") + 1 : -1]: _ratio(
            _runs(bench), *bench["extra_info"]["pair"]
        )
        for name, bench in benches.items()
        if name.startswith("test_overhead_pair[")
    }
    return [*lines, "", *_goals(pairs)]


def _goals(pairs: dict[str, Ratio | None]) -> list[str]:
    lines = [
        "The goals are judged on head-to-head runs: each compared pair alone "
        "in processes of its own (benchmarks/README.md says why)."
    ]
    writer, replica = (
        pairs.get("writer_vs_plain"),
        pairs.get("read_only_vs_plain_replicas"),
    )
    if writer and replica:
        ok = writer[0] <= goals.OVERHEAD and replica[0] <= goals.OVERHEAD
        lines.append(
            f"Goal RoutingSession ≤ {goals.OVERHEAD}x plain AsyncSession: default "
            f"role (writer) {_spread(writer)}; read_only against a plain "
            f"AsyncSession on the same replicas {_spread(replica)} — {_met(ok)}."
        )
    control = pairs.get("control_a_a")
    peer = [
        ("writer", pairs.get("writer_vs_peer")),
        ("read_only", pairs.get("read_only_vs_peer")),
    ]
    if control is None or not all(ratio for _, ratio in peer):
        return [*lines, "The peer comparison did not run (it needs SQLAlchemy 2.0)."]
    resolution = max(abs(control[1] - 1), abs(control[2] - 1))
    slower = [label for label, ratio in peer if ratio and ratio[0] > 1 + resolution]
    shown = "; ".join(f"{label} {_spread(ratio)}" for label, ratio in peer if ratio)
    return [
        *lines,
        f"A/A control, read_only against a copy of itself: {_spread(control)}: "
        f"identical code measured up to {resolution * 100:.1f}% apart.",
        "Goal no slower than the peer (a median above 1 by more than the A/A "
        f"control's spread): {shown} — {_met(not slower)}.",
    ]


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


def _checkout(bench: dict[str, Any] | None) -> list[str]:
    runs = _runs(bench)
    pre, idle = (
        _ratio(runs, "pre_ping", "no_ping"),
        _ratio(runs, "idle_ping", "no_ping"),
    )
    if pre is None or idle is None:
        return ["Not run."]
    return [
        "| checkout check | x no check |",
        "|---|---:|",
        f"| SQLAlchemy `pool_pre_ping` | {pre[0]:.3f} |",
        "| none | 1.000 |",
        f"| routing_db idle check (the default) | {idle[0]:.3f} |",
        "",
        f"Goal: the idle check ≤ {goals.CHECKOUT}x no check: {_spread(idle)} — "
        f"{_met(idle[0] <= goals.CHECKOUT)}.",
    ]


def main(path: str) -> None:
    """Write RESULTS.md and starvation.png from the JSON at ``path``."""
    data = json.loads(Path(path).read_text())
    benches = {bench["name"]: bench for bench in data["benchmarks"]}
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
        *_overhead(benches),
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
        *_checkout(benches.get("test_checkout_interleaved")),
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
