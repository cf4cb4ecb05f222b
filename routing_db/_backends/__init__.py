"""What each database backend knows: its SQL for roles and replay positions,
the identity of the server a connection reached, connection setup (read-only
replicas, a writer that is a standby), driver tables and socket checks."""

__all__: list[str] = []
