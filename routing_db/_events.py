"""Routing events for observers (metrics): a small listener protocol.

The core calls ``emit`` only when somebody listens, so an unobserved router
pays one truth test per event.
"""

from __future__ import annotations

from typing import Any, Protocol

__all__ = ["Listeners", "RoutingListener"]


class RoutingListener(Protocol):
    """What a router reports; subclass it and implement the methods you need."""

    # Bodies that return: the methods a subclass leaves out stay no-ops.

    def routed(self, engine: str, role: str, reason: str) -> None:
        """A statement was sent to ``engine`` (``role``) because of ``reason``."""
        return None

    def fell_back(self, engine: str) -> None:
        """A replica read went to the writer because no replica was available."""
        return None

    def ejected(self, engine: str) -> None:
        """A replica was taken out of service after connection failures."""
        return None

    def readmitted(self, engine: str) -> None:
        """An ejected replica answered again and serves reads."""
        return None

    def retried(self, kind: str, outcome: str) -> None:
        """A retry sequence of ``kind`` ended with ``outcome``."""
        return None

    def starved(self, engine: str, kind: str) -> None:
        """The starvation detector warned (``hold`` or ``checkout_wait``)."""
        return None

    def role_changed(self, engine: str, old: str, new: str) -> None:
        """``engine`` was found in another role (``writer``/``replica``/``unknown``)."""
        return None

    def streaming_changed(self, engine: str, streaming: bool) -> None:
        """Replica ``engine`` stopped (or started again) streaming from its primary."""
        return None

    def disposed(self) -> None:
        """The router was disposed (it routes nothing until started again)."""
        return None


class Listeners(list[Any]):
    """The listeners of one router."""

    def emit(self, event: str, *args: Any) -> None:
        """Call ``event`` on every listener that has it."""
        for listener in self:
            method = getattr(listener, event, None)
            if method is not None:
                method(*args)
