"""The monitor's rounds: the writer's role and position, then each replica due,
run as an asyncio task (Router) or a thread (SyncRouter)."""

__all__: list[str] = []
