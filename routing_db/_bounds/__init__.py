"""Bounds on what may hang: connects and checks (connect_timeout, check
bounds), and replica statements past replica_read_timeout, on both faces."""

__all__: list[str] = []
