"""``Hooks``: what a router installs (SQLAlchemy event listeners, and the
background workers they need), removed as one when the router is disposed."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from sqlalchemy import event

__all__ = ["Hooks", "Worker"]


class Worker(Protocol):
    """Background work a router's hooks started: stopped with the hooks."""

    def close(self) -> None:
        """Stop, within a second, leaving nothing running."""


W = TypeVar("W", bound=Worker)


class Hooks:
    """Listens like ``event.listen`` and remembers, so ``remove()`` undoes it all."""

    def __init__(self) -> None:
        self._installed: list[tuple[Any, str, Callable[..., Any]]] = []
        self._undo: list[Callable[[], None]] = []
        self._workers: dict[str, Worker] = {}

    def listen(self, target: Any, name: str, fn: Callable[..., Any]) -> None:
        """``event.listen(target, name, fn)``, to be removed with the rest."""
        event.listen(target, name, fn)
        self._installed.append((target, name, fn))

    def on_remove(self, undo: Callable[[], None]) -> None:
        """Call ``undo`` in ``remove()``: for what SQLAlchemy offers no event."""
        self._undo.append(undo)

    def worker(self, name: str, make: Callable[[], W]) -> W:
        """The router's one worker called ``name``, made on first use; it is
        closed by ``remove()`` (a router leaves no thread behind)."""
        worker = self._workers.get(name)
        if worker is None:
            worker = self._workers[name] = make()
        return worker  # type: ignore[return-value]

    def remove(self) -> None:
        """Remove every listener installed through this object and close its
        workers (idempotent)."""
        workers, self._workers = self._workers, {}
        for worker in workers.values():
            worker.close()
        installed, self._installed = self._installed, []
        for target, name, fn in reversed(installed):
            if event.contains(target, name, fn):
                event.remove(target, name, fn)
        undo, self._undo = self._undo, []
        for fn in reversed(undo):
            fn()
