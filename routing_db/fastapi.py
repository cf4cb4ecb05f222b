"""FastAPI / Starlette glue: a lifespan that owns the router, and ``get_db``.

Needs Starlette (``pip install 'routing_db[fastapi]'``). The middleware lives in
``routing_db.asgi`` (no dependency) and is re-exported here.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

from starlette.requests import Request

from ._async_session import RoutingSession, routing_sessionmaker
from ._router import Router
from ._settings import RoutingSettings
from .asgi import DEFAULT_TOKEN_HEADER, RoutingMiddleware

__all__ = ["DEFAULT_TOKEN_HEADER", "RoutingMiddleware", "get_db", "routing_lifespan"]

Lifespan = Callable[[Any], contextlib.AbstractAsyncContextManager[None]]


def routing_lifespan(
    settings: RoutingSettings | None = None,
    *,
    router: Router | None = None,
    lifespan: Lifespan | None = None,
    **session_options: Any,
) -> Lifespan:
    """A lifespan that puts a router and its sessionmaker on ``app.state``.

    The router comes from ``router`` or ``settings`` (``None``: the
    ``ROUTING_DB_*`` environment); its monitor runs while the app does, and
    its engines are disposed at shutdown. ``lifespan`` is the application's
    own (create tables, warm caches...): it runs inside, once the router is
    on ``app.state``, and ends before the engines are disposed.
    ``session_options`` go to ``routing_sessionmaker`` (``expire_on_commit``,
    ``default_role``...).
    """

    @contextlib.asynccontextmanager
    async def routed(app: Any) -> AsyncIterator[None]:
        routing = router if router is not None else Router.from_settings(settings)
        app.state.routing_router = routing
        app.state.routing_sessionmaker = routing_sessionmaker(
            routing, **session_options
        )
        async with routing:
            if lifespan is None:
                yield
            else:
                async with lifespan(app):
                    yield

    return routed


async def get_db(request: Request) -> AsyncIterator[RoutingSession]:
    """One ``RoutingSession`` per request: rolled back on error, always closed."""
    maker = request.app.state.routing_sessionmaker
    async with maker() as session:
        try:
            yield session
        except Exception:
            await session.rollback()
            raise
