"""Where a statement goes: its kind, the context's flags and scopes, and the
routing decision, a pure function of them (no engine, no I/O)."""

__all__: list[str] = []
