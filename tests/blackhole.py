"""Loopback TCP listeners that never answer: a host that hangs, or drops SYNs."""

from __future__ import annotations

import socket
import threading
from types import TracebackType


class Blackhole:
    """``silent``: accepts every connection and never sends a byte.
    ``unaccepted``: never accepts, its backlog full, so new connects hang."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._listener = socket.socket()
        self._listener.bind(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._held: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Blackhole:
        if self.kind == "silent":
            self._listener.listen(64)
            self._listener.settimeout(0.1)
            self._thread = threading.Thread(target=self._accept, daemon=True)
            self._thread.start()
        else:
            # Backlog 0: the kernel queues one connection; fill the queue so
            # that later SYNs are dropped and connects wait.
            self._listener.listen(0)
            for _ in range(2):
                client = socket.socket()
                client.setblocking(False)
                client.connect_ex(("127.0.0.1", self.port))
                self._held.append(client)
        return self

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                connection, _ = self._listener.accept()
            except OSError:
                continue
            self._held.append(connection)  # open, silent

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        for held in self._held:
            held.close()
        self._listener.close()
