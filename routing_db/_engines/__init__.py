"""Engines as routing_db makes and watches them: engine creation and URL
checks, the hooks a router installs (and removes): connection setup, the lost
COMMIT, the idle check; pool observation and the slow-query log."""

__all__: list[str] = []
