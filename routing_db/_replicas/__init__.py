"""The replicas as routing sees them: health and lag per replica, replay
positions per server, the balancing policies, and the choice of a replica."""

__all__: list[str] = []
