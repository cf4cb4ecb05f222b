"""The engines a router routes between and their shared live state, and the
writer found among a cluster's nodes (role checks, timelines, Patroni)."""

__all__: list[str] = []
