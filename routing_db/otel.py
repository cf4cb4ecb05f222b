"""OpenTelemetry: the routing decision as attributes of the current span (needs
``opentelemetry-api``: the ``otel`` extra).

    from routing_db.otel import instrument

    instrument(router)

Each statement routed while a span is recording sets ``routing_db.role``,
``routing_db.engine`` (``host:port/database``: never a password) and
``routing_db.reason`` on that span (the last statement's decision wins) and
adds a ``routing_db.routed`` event with the same attributes, so every
statement of a request is on its span. A read sent to the writer because no
replica was available sets ``routing_db.fallback``; a statement run again
sets ``routing_db.retry.kind`` and ``routing_db.retry.outcome``. Only the API
is used: with no SDK configured, every span is a no-op and nothing is
recorded.
"""

from __future__ import annotations

from typing import Any

from ._events import RoutingListener
from ._exceptions import missing_extra
from ._router.base import RouterBase

try:
    from opentelemetry import trace
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise missing_extra("routing_db.otel", "opentelemetry-api", "otel") from exc

__all__ = ["SpanAttributes", "instrument"]


def _record(event: str, attributes: dict[str, Any]) -> None:
    # On the span current where the decision was made, as attributes (the
    # last decision) and as an event (each one).
    span = trace.get_current_span()
    if span.is_recording():
        span.set_attributes(attributes)
        span.add_event(event, attributes)


class SpanAttributes(RoutingListener):
    """Puts each routing decision on the span current where it was made."""

    def routed(self, engine: str, role: str, reason: str) -> None:
        """Record where a statement went, and why."""
        _record(
            "routing_db.routed",
            {
                "routing_db.role": role,
                "routing_db.engine": engine,
                "routing_db.reason": reason,
            },
        )

    def fell_back(self, engine: str) -> None:
        """Record that a replica read went to the writer."""
        span = trace.get_current_span()
        if span.is_recording():
            span.set_attribute("routing_db.fallback", True)

    def retried(self, kind: str, outcome: str) -> None:
        """Record that a statement ran again, and how that ended."""
        _record(
            "routing_db.retried",
            {"routing_db.retry.kind": kind, "routing_db.retry.outcome": outcome},
        )


def instrument(router: RouterBase[Any]) -> SpanAttributes:
    """Report ``router``'s routing decisions on the current span; return the listener.

    ``router.remove_listener(listener)`` stops it.
    """
    listener = SpanAttributes()
    router.add_listener(listener)
    return listener
