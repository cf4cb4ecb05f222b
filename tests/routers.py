"""``RouterMaker``: the routers a test makes, disposed at its end (the
``make_router`` fixture)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar

from sqlalchemy.engine import URL

from routing_db import Router, SyncRouter

__all__ = ["RouterMaker"]

R = TypeVar("R", Router, SyncRouter)


class RouterMaker:
    """Routers made for one test (either face), all disposed at its end."""

    def __init__(self) -> None:
        self.made: list[Router | SyncRouter] = []

    def __call__(
        self, writer: str | URL, replicas: Sequence[str | URL] = (), **options: Any
    ) -> Router:
        """``Router.from_urls(writer, replicas, **options)``."""
        return self.keep(Router.from_urls(writer, list(replicas), **options))

    def sync(
        self, writer: str | URL, replicas: Sequence[str | URL] = (), **options: Any
    ) -> SyncRouter:
        """``SyncRouter.from_urls(writer, replicas, **options)``."""
        return self.keep(SyncRouter.from_urls(writer, list(replicas), **options))

    def keep(self, router: R) -> R:
        """A router made otherwise (``from_cluster``, engines), disposed too."""
        self.made.append(router)
        return router

    async def dispose(self) -> None:
        """Dispose of every router made, newest first."""
        made, self.made = self.made, []
        for router in reversed(made):
            if isinstance(router, Router):
                await router.dispose()
            else:
                router.dispose()
