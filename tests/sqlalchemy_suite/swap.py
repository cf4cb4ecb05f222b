"""pytest plugin: ``sqlalchemy.ext.asyncio.AsyncSession`` is ``RoutingSession``.

Loaded (``-p``) before SQLAlchemy's test modules import the name, so every
test written against ``AsyncSession`` gets a ``RoutingSession`` with no router:
the drop-in promise, checked by SQLAlchemy's own tests.
"""

from __future__ import annotations

import sqlalchemy.ext.asyncio

from routing_db import RoutingSession

__all__: list[str] = []

sqlalchemy.ext.asyncio.AsyncSession = RoutingSession  # type: ignore[misc]
