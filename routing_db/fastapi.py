"""FastAPI / Starlette glue: a lifespan that owns the router, and ``get_db``,
for either face: ``async def`` endpoints with a ``Router``, or ``def``
endpoints (run in the thread pool) with a ``SyncRouter``.

Needs Starlette (``pip install 'routing_db[fastapi]'``). The middleware lives in
``routing_db.asgi`` (no dependency) and is re-exported here.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

from starlette.requests import Request

from . import asgi
from ._causal.http import READ_METHODS
from ._causal.store import causal_key as key_scope
from ._router.router import Router
from ._router.sync_router import SyncRouter
from ._session.async_session import RoutingSession, routing_sessionmaker
from ._session.makers import routing_sync_sessionmaker
from ._session.sync_session import RoutingSyncSession
from ._settings import RoutingSettings, SyncRoutingSettings
from .asgi import DEFAULT_TOKEN_HEADER

__all__ = ["DEFAULT_TOKEN_HEADER", "RoutingMiddleware", "get_db", "routing_lifespan"]

Lifespan = Callable[[Any], contextlib.AbstractAsyncContextManager[None]]
KeyOf = Callable[[Request], object]


class RoutingMiddleware(asgi.RoutingMiddleware):
    """``routing_db.asgi.RoutingMiddleware`` whose ``causal_key`` function
    gets a Starlette ``Request`` (the ASGI one gets the scope)."""

    def __init__(
        self,
        app: asgi.ASGIApp,
        *,
        header: str = DEFAULT_TOKEN_HEADER,
        cookie: str | None = None,
        roles_by_method: bool = False,
        read_methods: Iterable[str] = READ_METHODS,
        causal_key: KeyOf | None = None,
    ) -> None:
        super().__init__(
            app,
            header=header,
            cookie=cookie,
            roles_by_method=roles_by_method,
            read_methods=read_methods,
            causal_key=None if causal_key is None else _of_scope(causal_key),
        )


def _of_scope(key_of: KeyOf) -> Callable[[Any], object]:
    return lambda scope: key_of(Request(scope))


def routing_lifespan(
    settings: RoutingSettings | None = None,
    *,
    router: Router | SyncRouter | None = None,
    sync: bool = False,
    lifespan: Lifespan | None = None,
    causal_key: KeyOf | None = None,
    **session_options: Any,
) -> Lifespan:
    """A lifespan that puts a router and its sessionmaker on ``app.state``.

    The router comes from ``router`` or ``settings`` (``None``: the
    ``ROUTING_DB_*`` environment); its monitor runs while the app does, and
    its engines are disposed at shutdown. A ``SyncRouter`` (``router``,
    ``SyncRoutingSettings``, or ``sync=True`` with the environment) serves
    ``def`` endpoints: ``get_db`` then yields a ``RoutingSyncSession``.
    ``lifespan`` is the application's own (create tables, warm caches...):
    it runs inside, once the router is on ``app.state``, and ends before the
    engines are disposed. ``causal_key(request)``: the application key
    (user, tenant) of ``get_db``'s sessions, for a router with a causal
    store. ``session_options`` go to the sessionmaker (``expire_on_commit``,
    ``default_role``, ``class_``...).
    """
    sync = (
        isinstance(router, SyncRouter)
        if router is not None
        else sync or isinstance(settings, SyncRoutingSettings)
    )

    @contextlib.asynccontextmanager
    async def routed(app: Any) -> AsyncIterator[None]:
        app.state.routing_causal_key = causal_key
        if sync:
            routing: Any = router or SyncRouter.from_settings(settings)
            maker: Any = routing_sync_sessionmaker(routing, **session_options)
        else:
            routing = router or Router.from_settings(settings)
            maker = routing_sessionmaker(routing, **session_options)
        app.state.routing_router = routing
        app.state.routing_sessionmaker = maker
        async with _running(routing):
            if lifespan is None:
                yield
            else:
                async with lifespan(app):
                    yield

    return routed


@contextlib.asynccontextmanager
async def _running(router: Router | SyncRouter) -> AsyncIterator[None]:
    if isinstance(router, Router):
        async with router:
            yield
        return
    # A SyncRouter connects and disposes with blocking calls: off the loop.
    await asyncio.to_thread(router.start)
    try:
        yield
    finally:
        await asyncio.to_thread(router.dispose)


async def get_db(
    request: Request,
) -> AsyncIterator[RoutingSession | RoutingSyncSession]:
    """One session per request (a ``RoutingSyncSession`` for a ``SyncRouter``):
    rolled back on error, always closed; under the lifespan's ``causal_key``
    for this request, if it has one."""
    maker = request.app.state.routing_sessionmaker
    key_of: KeyOf | None = getattr(request.app.state, "routing_causal_key", None)
    key = None if key_of is None else key_of(request)
    # The dependency and the endpoint run in one task (a def endpoint in a
    # thread that copies its context): the key set here is the endpoint's
    # too, until the response is sent.
    with key_scope(key) if key is not None else contextlib.nullcontext():
        session = maker()
        if isinstance(session, RoutingSession):
            async with session:
                try:
                    yield session
                except Exception:
                    await session.rollback()
                    raise
            return
        # A sync session does its I/O off the loop, as the endpoint does.
        try:
            yield session
        except Exception:
            await asyncio.to_thread(session.rollback)
            raise
        finally:
            await asyncio.to_thread(session.close)
