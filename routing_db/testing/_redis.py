"""A throwaway redis-server on a free loopback port (no persistence)."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from ._servers import ClusterError, find_binary, free_ports

__all__ = ["RedisServer", "find_redis_server"]

INSTALL_HINT = (
    "redis-server was not found. Install it (Debian/Ubuntu: apt-get install "
    "redis-server; macOS: brew install redis) or set ROUTING_DB_REDIS_SERVER_BIN."
)


def find_redis_server() -> Path:
    """Locate the redis-server binary."""
    found = find_binary(
        "redis-server",
        env="ROUTING_DB_REDIS_SERVER_BIN",
        default="/usr/bin/redis-server",
    )
    if found is None:
        raise ClusterError(INSTALL_HINT)
    return found


class RedisServer:
    """One redis-server process; ``stop()``/``start_again()`` for outages."""

    def __init__(self, *, port: int, basedir: Path) -> None:
        self.port = port
        self._basedir = basedir
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>/0``."""
        return f"redis://127.0.0.1:{self.port}/0"

    @classmethod
    def start(cls) -> RedisServer:
        """Start a redis-server on a free loopback port; stop it with ``stop()``."""
        (port,) = free_ports(1)
        server = cls(
            port=port, basedir=Path(tempfile.mkdtemp(prefix="routing_db_redis_"))
        )
        server.start_again()
        return server

    def start_again(self, timeout: float = 10) -> None:
        """(Re)start the server on the same port, empty."""
        command = [
            str(find_redis_server()),
            "--port", str(self.port), "--bind", "127.0.0.1",
            "--save", "", "--appendonly", "no", "--dir", str(self._basedir),
            "--protected-mode", "no",
        ]  # fmt: skip
        log = open(self._basedir / "redis.log", "ab")  # noqa: SIM115 - the child's
        self._process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        log.close()
        deadline = time.monotonic() + timeout
        while not self._answers():
            if self._process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                log_text = (self._basedir / "redis.log").read_text(errors="replace")
                raise ClusterError(f"redis-server did not start:\n{log_text[-2000:]}")
            time.sleep(0.02)

    def _answers(self) -> bool:
        with (
            contextlib.suppress(OSError),
            socket.create_connection(
                ("127.0.0.1", self.port), timeout=0.2
            ) as connection,
        ):
            connection.sendall(b"PING\r\n")
            return connection.recv(16).startswith(b"+PONG")
        return False

    def stop(self) -> None:
        """Kill the server (its data is gone: it keeps nothing on disk)."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.kill()
            process.wait(timeout=10)

    def remove(self) -> None:
        """Stop the server and delete its directory."""
        self.stop()
        shutil.rmtree(self._basedir, ignore_errors=True)
