"""``routing_sync_sessionmaker``: the sync face's drop-in ``sessionmaker``."""

from __future__ import annotations

from typing import Any, TypeVar, overload

from sqlalchemy.orm import sessionmaker

from .._decide.decision import DefaultRole, check_default_role
from .._exceptions import ConfigurationError
from .._router.base import RouterBase
from .._router.sync_router import SyncRouter
from .sync_session import RoutingSyncSession

__all__ = ["maker_options", "routing_sync_sessionmaker"]


S = TypeVar("S", bound=RoutingSyncSession)


@overload
def routing_sync_sessionmaker(
    router: SyncRouter,
    *,
    class_: type[S],
    default_role: DefaultRole | None = None,
    **kw: Any,
) -> sessionmaker[S]: ...


@overload
def routing_sync_sessionmaker(
    router: SyncRouter, *, default_role: DefaultRole | None = None, **kw: Any
) -> sessionmaker[RoutingSyncSession]: ...


def routing_sync_sessionmaker(
    router: SyncRouter,
    *,
    default_role: DefaultRole | None = None,
    **kw: Any,
) -> sessionmaker[Any]:
    """A ``sessionmaker`` of ``RoutingSyncSession``s (or ``class_``'s, a
    subclass) routed by ``router``."""
    if not isinstance(router, SyncRouter):
        raise ConfigurationError(
            "routing_sync_sessionmaker needs a SyncRouter, got "
            f"{type(router).__name__} (asyncio: routing_sessionmaker)"
        )
    kw = maker_options(
        router,
        default_role,
        kw,
        base=RoutingSyncSession,
        maker="routing_sync_sessionmaker",
    )
    return sessionmaker(router.writer, router=router, **kw)


def maker_options(
    router: RouterBase[Any],
    default_role: DefaultRole | None,
    kw: dict[str, Any],
    *,
    base: type,
    maker: str,
) -> dict[str, Any]:
    """A routing sessionmaker's keywords, checked, with ``class_`` (either face).

    ``default_role`` is passed on only where it differs from the router's:
    one keyword less for every session made.
    """
    if "bind" in kw:
        raise ConfigurationError(
            f"{maker} takes no bind: the router's writer is the bind"
        )
    role = default_role if default_role is not None else router.default_role
    check_default_role(role)
    class_ = kw.pop("class_", base)
    if not (isinstance(class_, type) and issubclass(class_, base)):
        raise ConfigurationError(f"class_ must be {base.__name__} or a subclass")
    if role != router.default_role:
        kw["default_role"] = role
    return {**kw, "class_": class_}
