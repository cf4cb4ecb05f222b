"""The routing-db command: check (the doctor) and loadtest."""

__all__: list[str] = []
