"""``Hooks``: the SQLAlchemy event listeners a router installs, removable as one."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import event

__all__ = ["Hooks"]


class Hooks:
    """Listens like ``event.listen`` and remembers, so ``remove()`` undoes it all."""

    def __init__(self) -> None:
        self._installed: list[tuple[Any, str, Callable[..., Any]]] = []

    def listen(self, target: Any, name: str, fn: Callable[..., Any]) -> None:
        """``event.listen(target, name, fn)``, to be removed with the rest."""
        event.listen(target, name, fn)
        self._installed.append((target, name, fn))

    def remove(self) -> None:
        """Remove every listener installed through this object (idempotent)."""
        installed, self._installed = self._installed, []
        for target, name, fn in reversed(installed):
            if event.contains(target, name, fn):
                event.remove(target, name, fn)
