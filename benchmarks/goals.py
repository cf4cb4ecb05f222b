"""The goals the benchmarks are judged by, in one place (report.py reads them)."""

from __future__ import annotations

__all__ = ["CAPACITY", "LIMITS", "MARGIN", "SKEW"]

# Pair (variants.PAIRS) -> the highest median ratio that meets its goal:
# RoutingSession per select, as a multiple of a plain AsyncSession on the
# same server(s) or of the peer (advanced-alchemy: "no slower" is 1); the idle
# checkout check as a multiple of no check at all.
LIMITS = {
    "writer_vs_plain": 1.03,
    "read_only_vs_plain_replicas": 1.03,
    "writer_vs_peer": 1.0,
    "read_only_vs_peer": 1.0,
    "idle_check_vs_none": 1.05,
}
# A median counts as over its limit only when it is over by more than this or
# than the A/A control's spread in the same run, whichever is wider: 1% is
# about 9 µs of a 900 µs select, below what a request can notice and about
# the layout noise between two libraries' code (benchmarks/README.md).
MARGIN = 0.01
# Throughput of IO-bound reads with two replicas and the writer sharing them,
# as a multiple of the writer alone.
CAPACITY = 2.7
# p99 latency with one slow replica: least_busy as a fraction of round_robin.
SKEW = 0.5
