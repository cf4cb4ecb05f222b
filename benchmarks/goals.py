"""The goals the benchmarks are judged by, in one place (report.py reads them)."""

from __future__ import annotations

__all__ = ["CAPACITY", "CHECKOUT", "OVERHEAD", "SKEW"]

# RoutingSession per select, as a multiple of a plain AsyncSession on the same
# server(s); against the peer (advanced-alchemy), no slower beyond what an A/A
# control of identical code measures apart in the same run.
OVERHEAD = 1.03
# Throughput of IO-bound reads with two replicas and the writer sharing them,
# as a multiple of the writer alone.
CAPACITY = 2.7
# p99 latency with one slow replica: least_busy as a fraction of round_robin.
SKEW = 0.5
# The idle checkout check, as a multiple of no check at all.
CHECKOUT = 1.05
