"""Read-your-writes: positions as tokens, the causal floor of a context, the
store protocol that shares floors between processes, and HTTP token headers."""

__all__: list[str] = []
