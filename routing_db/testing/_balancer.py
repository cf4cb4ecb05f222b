"""A reader endpoint in front of several standbys, as users deploy one.

CloudNativePG's ``-ro`` service, a cloud provider's reader endpoint, HAProxy
with several servers, libpq's ``load_balance_hosts``: one address, and each
new connection reaches the next server. ``Balancer`` is the smallest such
thing, a TCP proxy on loopback that hands each new connection to the next
target in turn, on a thread of its own so that sync and async tests share it.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Sequence

from sqlalchemy.engine import make_url

from ._servers import ClusterError

__all__ = ["Balancer"]

_CHUNK = 65536


class Balancer:
    """Forwards each new connection on 127.0.0.1:``port`` to the next of
    ``targets`` (ports on 127.0.0.1), round robin; ``url(of)`` is ``of`` with
    the balancer's port."""

    def __init__(self, targets: Sequence[int]) -> None:
        if not targets:
            raise ValueError("a balancer needs at least one target port")
        self.targets = list(targets)
        self.port = 0
        self.connections = 0  # accepted so far
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._thread: threading.Thread | None = None
        self._streams: set[asyncio.StreamWriter] = set()

    def start(self) -> Balancer:
        """Listen on a port the OS hands out; return once it accepts."""
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = self._loop = asyncio.new_event_loop()
            try:
                self._server = loop.run_until_complete(
                    asyncio.start_server(self._serve, "127.0.0.1", 0)
                )
            except BaseException as exc:  # reported to start()'s caller
                failure.append(exc)
                ready.set()
                loop.close()
                return
            sock: socket.socket = self._server.sockets[0]
            self.port = int(sock.getsockname()[1])
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.close()

        self._thread = threading.Thread(target=run, name="balancer", daemon=True)
        self._thread.start()
        if not ready.wait(10) or failure:
            raise ClusterError(f"the balancer did not start: {failure}")
        return self

    def url(self, of: str) -> str:
        """``of`` (a SQLAlchemy URL of one target) pointed at the balancer."""
        return (
            make_url(of)
            .set(host="127.0.0.1", port=self.port)
            .render_as_string(hide_password=False)
        )

    def stop(self) -> None:
        """Close the listener and every forwarded connection; end the thread."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None or loop.is_closed():
            return

        async def close() -> None:
            if self._server is not None:
                self._server.close()
            for writer in list(self._streams):
                writer.close()

        with contextlib.suppress(RuntimeError):  # the loop ended meanwhile
            asyncio.run_coroutine_threadsafe(close(), loop).result(10)
            loop.call_soon_threadsafe(loop.stop)
        thread.join(10)

    def __enter__(self) -> Balancer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    async def _serve(
        self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter
    ) -> None:
        target = self.targets[self.connections % len(self.targets)]
        self.connections += 1
        try:
            server_r, server_w = await asyncio.open_connection("127.0.0.1", target)
        except OSError:
            client_w.close()  # the client sees the refusal as a lost connection
            return
        self._streams |= {client_w, server_w}
        await asyncio.gather(
            self._pump(client_r, server_w), self._pump(server_r, client_w)
        )
        self._streams -= {client_w, server_w}

    @staticmethod
    async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(_CHUNK):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()
