"""Read-your-writes across processes, keyed by the user: positions in Redis
(needs ``redis``: the ``redis`` extra).

    from routing_db import Router, causal_key
    from routing_db.redis import RedisCausalStore

    router = Router.from_urls(..., causal_store=RedisCausalStore("redis://cache:6379/0"))

    async with causal_key(user.id):      # the ASGI middleware and get_db take
        ...                              # causal_key=lambda request: ...

After a commit that wrote under a key, its position is kept for ``ttl``
seconds (a Lua script keeps the newest: a slower, older save never lowers
it); a read under the key in any process sees at least that. The same store
serves ``Router`` (``redis.asyncio``, on the event loop) and ``SyncRouter``
(``redis``, on the calling thread).
"""

from __future__ import annotations

import asyncio
import weakref
from typing import Any

from ._causal.floor import CausalFloor
from ._causal.store import UNKNOWN
from ._compat import run_io
from ._exceptions import ConfigurationError, missing_extra

try:
    import redis
    import redis.asyncio
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise missing_extra("routing_db.redis", "redis", "redis") from exc

__all__ = ["RedisCausalStore"]

# KEYS: the key's hash, the store's birth marker. ARGV: lsn, server, wrote_at
# ('' where unknown), ttl in ms. Positions are decimal strings, compared as
# numbers of any size (a MariaDB position does not fit a Lua double).
_SAVE = """
local function newer(a, b)
  if not b then return true end
  if #a ~= #b then return #a > #b end
  return a > b
end
redis.call('SET', KEYS[2], redis.call('TIME')[1], 'NX')
if ARGV[1] ~= '' and newer(ARGV[1], redis.call('HGET', KEYS[1], 'lsn')) then
  redis.call('HSET', KEYS[1], 'lsn', ARGV[1], 'server', ARGV[2])
end
local at = redis.call('HGET', KEYS[1], 'at')
if ARGV[3] ~= '' and (not at or tonumber(ARGV[3]) > tonumber(at)) then
  redis.call('HSET', KEYS[1], 'at', ARGV[3])
end
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return 1
"""
# The key's hash, and how long ago the store began keeping positions (a
# restarted Redis without persistence has lost what it had).
_LOAD = """
local now = tonumber(redis.call('TIME')[1])
redis.call('SET', KEYS[2], now, 'NX')
local born = tonumber(redis.call('GET', KEYS[2]))
return {now - born, redis.call('HGETALL', KEYS[1])}
"""


class RedisCausalStore:
    """Per-key write positions in Redis, for ``Router(causal_store=...)``."""

    def __init__(
        self,
        url: str,
        *,
        ttl: float = 30.0,
        prefix: str = "routing_db:",
        timeout: float = 0.25,
    ) -> None:
        if ttl <= 0:
            raise ConfigurationError("RedisCausalStore ttl must be > 0 seconds")
        self.ttl = ttl
        self.prefix = prefix
        self._born = f"{prefix}born"
        # Short: a Redis that hangs costs a read this much, then the writer.
        options: dict[str, Any] = {
            "socket_timeout": timeout,
            "socket_connect_timeout": timeout,
        }
        self._sync = redis.Redis.from_url(url, **options)
        self._url, self._options = url, options
        # redis.asyncio connections belong to the event loop that made them.
        self._async: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, tuple[Any, Any]
        ] = weakref.WeakKeyDictionary()
        self._save_sync = self._sync.register_script(_SAVE)
        self._load_sync = self._sync.register_script(_LOAD)

    def __repr__(self) -> str:
        pool: Any = self._sync.connection_pool
        kwargs = pool.connection_kwargs
        where = kwargs.get("path") or f"{kwargs.get('host')}:{kwargs.get('port')}"
        return f"RedisCausalStore({where}, ttl={self.ttl:g}, prefix={self.prefix!r})"

    def _scripts(self) -> tuple[Any, Any]:
        """This event loop's (save, load) scripts, on a client of its own."""
        loop = asyncio.get_running_loop()
        scripts = self._async.get(loop)
        if scripts is None:
            client = redis.asyncio.Redis.from_url(self._url, **self._options)
            scripts = (client.register_script(_SAVE), client.register_script(_LOAD))
            self._async[loop] = scripts
        return scripts

    def save(self, key: str, floor: CausalFloor) -> None:
        """Raise ``key``'s stored position to ``floor``'s, atomically."""
        keys = [self.prefix + key, self._born]
        args: list[str | int] = [
            "" if floor.lsn is None else str(floor.lsn),
            "" if floor.server is None else str(floor.server),
            "" if floor.wrote_at is None else repr(floor.wrote_at),
            int(self.ttl * 1000),
        ]

        async def on_loop() -> Any:
            return await self._scripts()[0](keys=keys, args=args)

        run_io(on_loop, lambda: self._save_sync(keys=keys, args=args))

    def load(self, key: str) -> CausalFloor | None:
        """``key``'s stored position; ``UNKNOWN`` within ``ttl`` of the store's
        start (it may have lost positions)."""
        keys = [self.prefix + key, self._born]

        async def on_loop() -> Any:
            return await self._scripts()[1](keys=keys)

        age, fields = run_io(on_loop, lambda: self._load_sync(keys=keys))
        if int(age) < self.ttl:
            return UNKNOWN
        stored = {
            (k.decode() if isinstance(k, bytes) else k): (
                v.decode() if isinstance(v, bytes) else v
            )
            for k, v in zip(fields[::2], fields[1::2], strict=True)
        }
        if not stored:
            return None
        return CausalFloor(
            int(stored["lsn"]) if stored.get("lsn") else None,
            float(stored["at"]) if stored.get("at") else None,
            int(stored["server"]) if stored.get("server") else None,
        )
