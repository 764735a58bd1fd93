"""Runtime state shared by the planes: leases, mirrors and counter hashes (Redis or in-process).

Everything here is *derived* state in the sense of ARCHITECTURE.md ("authority, cache, mirror"):
leader leases (``{p}:leader:<loop>``), runtime mirrors such as a pod's effective scope
(``{p}:pods:<space>:<name>``), and the counter hashes the gateways flush
(``{p}:usage:…``, ``{p}:health:…``). The admin reads and writes them only through
:class:`RuntimeState`, so nobody reaches into a Redis client and ``turnout dev`` (no Redis) runs
the same code against :class:`MemoryRuntimeState`.

Every method raises :class:`routing.errors.StoreError` when the backing store fails, so callers
have one exception to handle.

Leases are ``SET key owner NX PX ttl`` plus compare-and-renew / compare-and-delete scripts: a
holder that stalls past its TTL loses the lease and cannot extend or release someone else's.
"""

from __future__ import annotations

import abc
import fnmatch
import time
from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from routing.errors import StoreError
from routing.keys import Keys
from routing.redis_store import RedisRouteStore
from routing.store import RouteStore

__all__ = ["MemoryRuntimeState", "RedisRuntimeState", "RuntimeState", "runtime_for"]

# KEYS: lease key.  ARGV: owner, ttl ms.  1 when the caller holds the lease afterwards.
_ACQUIRE_LUA = """
local cur = redis.call('GET', KEYS[1])
if not cur then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
if cur == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"""

# KEYS: lease key.  ARGV: owner.  1 when the caller's lease was deleted.
_RELEASE_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

_ERRORS = (RedisError, OSError, TimeoutError)


def _str(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _ints(raw: dict[Any, Any]) -> dict[str, int]:
    """A hash reply as ``field -> int``; fields that are not integers are skipped."""
    out: dict[str, int] = {}
    for field, value in raw.items():
        try:
            out[_str(field)] = int(value)
        except ValueError:
            continue
    return out


class RuntimeState(abc.ABC):
    """Async interface shared by the Redis and in-process implementations."""

    keys: Keys

    # -- leases ---------------------------------------------------------------------------

    @abc.abstractmethod
    async def acquire_lease(self, key: str, owner: str, ttl_ms: int) -> bool:
        """Take ``key`` if free, or renew it if ``owner`` holds it; True when ``owner`` holds it."""

    @abc.abstractmethod
    async def release_lease(self, key: str, owner: str) -> bool:
        """Delete ``key`` if ``owner`` holds it; True when it did."""

    @abc.abstractmethod
    async def lease_holder(self, key: str) -> str | None: ...

    # -- strings (mirrors) ------------------------------------------------------------------

    @abc.abstractmethod
    async def get(self, key: str) -> bytes | None: ...

    @abc.abstractmethod
    async def set(self, key: str, value: bytes, ttl_ms: int | None = None) -> None: ...

    @abc.abstractmethod
    async def delete(self, *keys: str) -> int: ...

    @abc.abstractmethod
    async def scan(self, match: str, count: int = 1000) -> list[str]:
        """Every key matching the glob ``match`` (Redis ``SCAN MATCH`` semantics)."""

    # -- hashes (counters) ------------------------------------------------------------------

    @abc.abstractmethod
    async def hgetall(self, key: str) -> dict[str, int]:
        """A counter hash as ``field -> int`` (non-integer fields are skipped); {} if absent."""

    async def hgetall_many(self, keys: list[str]) -> list[dict[str, int]]:
        """:meth:`hgetall` of every key, in order (one round trip on Redis)."""
        return [await self.hgetall(key) for key in keys]

    @abc.abstractmethod
    async def hincrby(self, key: str, fields: dict[str, int], ttl_s: int | None = None) -> None:
        """``HINCRBY`` every field, then ``EXPIRE`` when ``ttl_s`` is set."""

    async def close(self) -> None:  # noqa: B027 - optional hook; most states own nothing
        """Release what the state owns (a client it created)."""


class RedisRuntimeState(RuntimeState):
    """Runtime state in Redis. Owns its client when built from a URL, not when given one."""

    def __init__(
        self,
        url_or_client: str | aioredis.Redis,
        *,
        prefix: str = "turnout",
        connect_timeout: float = 2.0,
        socket_timeout: float = 5.0,
    ) -> None:
        self.keys = Keys(prefix)
        if isinstance(url_or_client, str):
            self._owned = True
            self.redis: aioredis.Redis = aioredis.Redis.from_url(
                url_or_client,
                socket_connect_timeout=connect_timeout,
                socket_timeout=socket_timeout,
                decode_responses=False,
            )
        else:
            self._owned = False
            self.redis = url_or_client
        self._acquire = self.redis.register_script(_ACQUIRE_LUA)
        self._release = self.redis.register_script(_RELEASE_LUA)

    async def _run(self, what: str, coro: Any) -> Any:
        try:
            return await coro
        except _ERRORS as exc:
            raise StoreError(f"redis {what} failed: {exc}") from exc

    async def acquire_lease(self, key: str, owner: str, ttl_ms: int) -> bool:
        res = await self._run("lease", self._acquire(keys=[key], args=[owner, int(ttl_ms)]))
        return bool(int(res))

    async def release_lease(self, key: str, owner: str) -> bool:
        res = await self._run("lease release", self._release(keys=[key], args=[owner]))
        return bool(int(res))

    async def lease_holder(self, key: str) -> str | None:
        value = await self._run("get", self.redis.get(key))
        return None if value is None else _str(value)

    async def get(self, key: str) -> bytes | None:
        value = await self._run("get", self.redis.get(key))
        return None if value is None else bytes(value)

    async def set(self, key: str, value: bytes, ttl_ms: int | None = None) -> None:
        await self._run("set", self.redis.set(key, value, px=ttl_ms))

    async def delete(self, *keys: str) -> int:
        if not keys:
            return 0
        return int(await self._run("delete", self.redis.delete(*keys)))

    async def scan(self, match: str, count: int = 1000) -> list[str]:
        async def collect() -> list[str]:
            return [_str(k) async for k in self.redis.scan_iter(match=match, count=count)]

        found: list[str] = await self._run("scan", collect())
        return sorted(set(found))

    async def hgetall(self, key: str) -> dict[str, int]:
        return _ints(await self._run("hgetall", self.redis.hgetall(key)))

    async def hgetall_many(self, keys: list[str]) -> list[dict[str, int]]:
        if not keys:
            return []

        async def read() -> list[Any]:
            async with self.redis.pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.hgetall(key)
                return list(await pipe.execute())

        return [_ints(raw) for raw in await self._run("hgetall", read())]

    async def hincrby(self, key: str, fields: dict[str, int], ttl_s: int | None = None) -> None:
        async def write() -> None:
            async with self.redis.pipeline(transaction=True) as pipe:
                for field, n in fields.items():
                    pipe.hincrby(key, field, n)
                if ttl_s is not None:
                    pipe.expire(key, ttl_s)
                await pipe.execute()

        await self._run("hincrby", write())

    async def close(self) -> None:
        if self._owned:
            await self.redis.aclose()

    def __repr__(self) -> str:
        return f"RedisRuntimeState({self.keys!r})"


class MemoryRuntimeState(RuntimeState):
    """The same semantics in this process (``turnout dev``, tests). Expiry follows ``clock``
    (epoch seconds), checked on every access."""

    def __init__(self, keys: Keys | None = None, *, clock: Callable[[], float] = time.time):
        self.keys = keys or Keys()
        self.clock = clock
        self.strings: dict[str, bytes] = {}
        self.hashes: dict[str, dict[str, int]] = {}
        self.expires: dict[str, float] = {}  # key -> absolute expiry (epoch seconds)

    def expire_due(self, now: float | None = None) -> None:
        now = self.clock() if now is None else now
        for key in [k for k, at in self.expires.items() if at <= now]:
            del self.expires[key]
            self.strings.pop(key, None)
            self.hashes.pop(key, None)

    async def acquire_lease(self, key: str, owner: str, ttl_ms: int) -> bool:
        self.expire_due()
        current = self.strings.get(key)
        if current is not None and current != owner.encode():
            return False
        self.strings[key] = owner.encode()
        self.expires[key] = self.clock() + ttl_ms / 1000
        return True

    async def release_lease(self, key: str, owner: str) -> bool:
        self.expire_due()
        if self.strings.get(key) != owner.encode():
            return False
        await self.delete(key)
        return True

    async def lease_holder(self, key: str) -> str | None:
        value = await self.get(key)
        return None if value is None else value.decode()

    async def get(self, key: str) -> bytes | None:
        self.expire_due()
        return self.strings.get(key)

    async def set(self, key: str, value: bytes, ttl_ms: int | None = None) -> None:
        self.expire_due()
        self.hashes.pop(key, None)
        self.strings[key] = bytes(value)
        if ttl_ms is None:
            self.expires.pop(key, None)
        else:
            self.expires[key] = self.clock() + ttl_ms / 1000

    async def delete(self, *keys: str) -> int:
        self.expire_due()
        gone = 0
        for key in keys:
            hit = self.strings.pop(key, None) is not None
            hit = self.hashes.pop(key, None) is not None or hit
            self.expires.pop(key, None)
            gone += hit
        return gone

    async def scan(self, match: str, count: int = 1000) -> list[str]:
        self.expire_due()
        return sorted(k for k in (*self.strings, *self.hashes) if fnmatch.fnmatchcase(k, match))

    async def hgetall(self, key: str) -> dict[str, int]:
        self.expire_due()
        return dict(self.hashes.get(key, {}))

    async def hincrby(self, key: str, fields: dict[str, int], ttl_s: int | None = None) -> None:
        self.incr_now(key, fields, ttl_s, self.clock())

    def incr_now(self, key: str, fields: dict[str, int], ttl_s: int | None, now: float) -> None:
        """Synchronous ``hincrby`` at ``now`` (for in-process writers such as a counter sink)."""
        self.expire_due(now)
        h = self.hashes.setdefault(key, {})
        for field, n in fields.items():
            h[field] = h.get(field, 0) + n
        if ttl_s is not None:
            self.expires[key] = now + ttl_s

    def __repr__(self) -> str:
        return f"MemoryRuntimeState(strings={len(self.strings)}, hashes={len(self.hashes)})"


def runtime_for(store: RouteStore) -> RuntimeState:
    """Runtime state beside a route store: on its Redis client (shared, not owned), or a new
    in-process state for an in-process store."""
    if isinstance(store, RedisRouteStore):
        return RedisRuntimeState(store.redis, prefix=store.keys.prefix)
    return MemoryRuntimeState()
