"""A TCP proxy on loopback that can hold back a server's close.

With ``hold_close`` set, what the server sends before it closes (its FATAL
goodbye) reaches the client at once, but the end of the stream does not: the
window in which a pooled connection has been told it is dead and cannot know
it yet, made as long as a test needs instead of a few microseconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import socket
import struct
import termios
from typing import Any

__all__ = ["HoldCloseProxy", "unread_bytes"]


def unread_bytes(sock: Any) -> int:
    """Bytes waiting in ``sock``'s receive queue (nobody has read them yet)."""
    raw = fcntl.ioctl(sock.fileno(), termios.FIONREAD, struct.pack("i", 0))
    return int(struct.unpack("i", raw)[0])


class HoldCloseProxy:
    """Forwards 127.0.0.1:``port`` to ``target_port``; see the module docstring."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.hold_close = False
        self.closes_held = 0
        self._release = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> HoldCloseProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        sock: socket.socket = self._server.sockets[0]
        self.port = int(sock.getsockname()[1])
        return self

    def release(self) -> None:
        """Pass on the closes held so far, and every later one."""
        self.hold_close = False
        self._release.set()

    async def _serve(
        self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter
    ) -> None:
        server_r, server_w = await asyncio.open_connection(
            "127.0.0.1", self.target_port
        )
        for reader, writer, from_server in (
            (client_r, server_w, False),
            (server_r, client_w, True),
        ):
            task = asyncio.create_task(self._pump(reader, writer, from_server))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pump(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        from_server: bool,
    ) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        if from_server and self.hold_close:
            self.closes_held += 1
            await self._release.wait()
        writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await writer.wait_closed()

    async def stop(self) -> None:
        """Stop listening and drop every forwarded connection."""
        self.release()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
