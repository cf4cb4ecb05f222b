"""The routing sessions: RoutingSyncSession (routing in get_bind, recovery
from lost connections, waiting for a writer), RoutingSession (asyncio), the
sessionmakers and unit_of_work."""

__all__: list[str] = []
