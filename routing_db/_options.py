"""The router's option names and their range checks (no engines, no I/O)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ._exceptions import ConfigurationError

__all__ = ["ROUTER_OPTIONS", "check_router_options"]

ROUTER_OPTIONS = frozenset(
    {
        "default_role",
        "fallback_to_writer",
        "require_standby",
        "policy",
        "weights",
        "max_lag_bytes",
        "max_lag_seconds",
        "monitor_interval",
        "eject_after",
        "eject_window",
        "max_writer_fallbacks",
        "sticky_seconds",
        "causal_wait_timeout",
        "retry",
        "ping_after_idle",
        "slow_query_seconds",
        "log_slow_parameters",
        "hold_warning_seconds",
        "checkout_wait_warning",
        "writer_read_weight",
    }
)


def check_router_options(
    *,
    weights: Sequence[float] | None,
    replicas: int,
    monitor_interval: float,
    max_writer_fallbacks: int | None,
    sticky_seconds: float,
    optional_seconds: Mapping[str, float | None],
    checkout_wait_warning: float | None,
    writer_read_weight: float,
) -> None:
    """Raise ``ConfigurationError`` for a router option out of range."""
    if weights is not None and (
        len(weights) != replicas or any(w < 0 for w in weights)
    ):
        raise ConfigurationError(
            f"weights needs one number >= 0 per replica ({replicas}), "
            f"got {len(weights)}"
        )
    if monitor_interval <= 0:
        raise ConfigurationError("monitor_interval must be > 0 seconds")
    if max_writer_fallbacks is not None and max_writer_fallbacks < 0:
        raise ConfigurationError("max_writer_fallbacks must be >= 0 or None")
    if sticky_seconds < 0:
        raise ConfigurationError("sticky_seconds must be >= 0")
    for field, value in optional_seconds.items():
        if value is not None and value < 0:
            raise ConfigurationError(f"{field} must be >= 0 seconds or None")
    if checkout_wait_warning is not None and not 0 < checkout_wait_warning <= 1:
        raise ConfigurationError(
            "checkout_wait_warning is a fraction of pool_timeout in (0, 1]"
        )
    if not 0 <= writer_read_weight < float("inf"):
        raise ConfigurationError("writer_read_weight must be a number >= 0")
