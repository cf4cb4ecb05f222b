"""RESULTS.md from pytest-benchmark's JSON, and the helpers that write its sections.

python -m benchmarks.report benchmarks/results.json

Each benchmark leaves its sections in ``extra_info["sections"]`` (title ->
markdown lines); this puts them in order under one header.
"""

from __future__ import annotations

import json
import platform
import statistics
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import sqlalchemy

from routing_db.loadtest import LoadSummary

HERE = Path(__file__).parent
__all__ = ["HERE", "add_section", "load_table", "spread", "table", "verdict"]


def add_section(benchmark: Any, title: str, lines: Sequence[str]) -> None:
    """Leave a section of RESULTS.md (its title starts with its number)."""
    benchmark.extra_info.setdefault("sections", {})[title] = list(lines)


def table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> list[str]:
    """A markdown table."""
    return [
        f"| {' | '.join(header)} |",
        f"|{'---|' * len(header)}",
        *(f"| {' | '.join(map(str, row))} |" for row in rows),
    ]


def load_table(runs: Iterable[tuple[str, LoadSummary]]) -> list[str]:
    """One row per load run: throughput, latency, checkout wait, who served it."""
    header = ["run", "workers", "ops/s", "p50 ms", "p99 ms"]
    header += ["checkout wait p99 ms", "timeouts", "client cpu", "where"]
    return table(
        header,
        (
            (
                label,
                s.concurrency,
                f"{s.throughput:.0f}",
                f"{s.latency_ms.p50:.1f}",
                f"{s.latency_ms.p99:.1f}",
                f"{s.checkout_wait_ms.p99:.1f}",
                s.timeouts,
                f"{s.client_cpu:.2f}",
                ", ".join(
                    f"{e.role} {e.operations}" for e in s.engines if e.operations
                ),
            )
            for label, s in runs
        ),
    )


def spread(values: Sequence[float], over: str, digits: int = 3, unit: str = "x") -> str:
    """The median of ``values`` with their range, e.g. 1.02x (rounds 1.01 to 1.04)."""
    median, low, high = statistics.median(values), min(values), max(values)
    return f"{median:.{digits}f}{unit} ({over} {low:.{digits}f} to {high:.{digits}f})"


def verdict(ok: bool) -> str:
    return "met" if ok else "**not met**"


def main(path: str) -> None:
    """Write RESULTS.md from the JSON at ``path``."""
    data = json.loads(Path(path).read_text())
    sections: dict[str, list[str]] = {}
    for bench in data["benchmarks"]:
        sections.update(bench["extra_info"].get("sections", {}))
    machine = data.get("machine_info", {}).get("cpu", {})
    out = [
        "# Benchmark results",
        "",
        "From **one** run of `make bench` on the machine described at the end "
        "(2 cores shared by the client, the primary and two replicas): compare "
        "ratios, not absolute times. How each is measured: "
        "[README.md](README.md).",
        "",
    ]
    for title in sorted(sections, key=lambda title: int(title.split(".")[0])):
        out += [f"## {title}", "", *sections[title], ""]
    out += [
        "## Machine",
        "",
        f"- {machine.get('brand_raw', platform.processor())}, "
        f"{machine.get('count', '?')} cores; Python {platform.python_version()}; "
        f"SQLAlchemy {sqlalchemy.__version__}; run at {data.get('datetime', '?')}",
        "",
    ]
    (HERE / "RESULTS.md").write_text("\n".join(out))
    print(f"wrote {HERE / 'RESULTS.md'}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else str(HERE / "results.json"))
