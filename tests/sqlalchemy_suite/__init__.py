"""SQLAlchemy's own ``test/ext/asyncio`` suite, run with ``RoutingSession``."""
