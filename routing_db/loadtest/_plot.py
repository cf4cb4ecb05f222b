"""Draw load results (needs matplotlib: the ``plot`` extra)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from .._exceptions import missing_extra
from ._summary import LoadSummary

__all__ = ["plot_summaries"]


def plot_summaries(results: Sequence[tuple[str, LoadSummary]], path: str) -> None:
    """Throughput, p99 latency, checkout-wait p99 and the replicas' share of the
    operations against concurrency, as PNG."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise missing_extra("plotting", "matplotlib", "plot") from None
    figure, axes = plt.subplots(1, 4, figsize=(18, 4.2))
    panels: list[tuple[str, Callable[[LoadSummary], float]]] = [
        ("throughput (ops/s)", lambda s: s.throughput),
        ("latency p99 (ms)", lambda s: s.latency_ms.p99),
        ("checkout wait p99 (ms)", lambda s: s.checkout_wait_ms.p99),
        ("served by replicas (% of operations)", lambda s: s.replica_share()),
    ]
    levels = sorted({summary.concurrency for _, summary in results})
    for axis, (title, value) in zip(axes, panels, strict=True):
        for label in dict.fromkeys(label for label, _ in results):
            points = [(s.concurrency, value(s)) for lab, s in results if lab == label]
            axis.plot(*zip(*points, strict=True), marker="o", label=label)
        axis.set_title(title)
        axis.set_xlabel("concurrent workers")
        axis.set_xscale("log")
        # The levels run, as plain numbers (a log axis would print 2x10^1).
        axis.set_xticks(levels, [str(level) for level in levels])
        axis.minorticks_off()
        axis.grid(True, alpha=0.3)
        axis.legend()
    profiles = ", ".join(dict.fromkeys(summary.profile for _, summary in results))
    figure.suptitle(f"routing-db bench: {profiles}")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
