"""The routers: what both faces share (options, engines, hooks, status,
constructors), Router and SyncRouter, membership changes and starvation."""

__all__: list[str] = []
