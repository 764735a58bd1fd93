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
:meth:`RuntimeState.try_lease` also says how long the current holder's lease has left, so a
follower can retry right when it would expire instead of polling blindly.

Notifications (:meth:`RuntimeState.notify`, :meth:`RuntimeState.subscribe`) are Redis pub/sub
(or in-process callbacks): wake-ups such as "the outbox has rows" or "the lease is free", never
state, so a lost message only costs the receiver's next poll (see :mod:`routing.subscription`).
"""

from __future__ import annotations

import abc
import fnmatch
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from routing.errors import StoreError
from routing.keys import Keys
from routing.redis_conn import connect
from routing.store import RouteStore
from routing.subscription import Callback, LocalSubscription, RedisSubscription, Subscription

__all__ = [
    "LeaseAnswer",
    "MemoryRuntimeState",
    "RedisRuntimeState",
    "RuntimeState",
    "Subscription",
    "runtime_for",
]

# KEYS: lease key.  ARGV: owner, ttl ms.  {1, ttl} when the caller holds the lease afterwards,
# {0, ms left on the holder's lease} otherwise.
_ACQUIRE_LUA = """
local cur = redis.call('GET', KEYS[1])
if not cur then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return {1, tonumber(ARGV[2])}
end
if cur == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return {1, tonumber(ARGV[2])}
end
return {0, redis.call('PTTL', KEYS[1])}
"""

# KEYS: lease key.  ARGV: owner.  1 when the caller's lease was deleted.
_RELEASE_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

_ERRORS = (RedisError, OSError, TimeoutError)
# A registered server-side script: (keys, args) -> its result.
Script = Callable[[list[str], list[Any]], Awaitable[Any]]


def _str(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _ints(raw: dict[Any, Any]) -> dict[str, int]:
    """A Redis hash as ``field -> int``; fields whose value is not an integer are skipped."""
    out: dict[str, int] = {}
    for field, value in raw.items():
        try:
            out[_str(field)] = int(value)
        except ValueError:
            continue
    return out


@dataclass(frozen=True, slots=True)
class LeaseAnswer:
    """What :meth:`RuntimeState.try_lease` found: ``held`` by the caller now, and the
    milliseconds left on the lease (the caller's new TTL, or the other holder's remainder;
    negative when the key has no expiry)."""

    held: bool
    remaining_ms: int


class RuntimeState(abc.ABC):
    """Async interface shared by the Redis and in-process implementations."""

    keys: Keys

    # -- leases ---------------------------------------------------------------------------

    @abc.abstractmethod
    async def try_lease(self, key: str, owner: str, ttl_ms: int) -> LeaseAnswer:
        """Take ``key`` if free, or renew it if ``owner`` holds it (one atomic step)."""

    async def acquire_lease(self, key: str, owner: str, ttl_ms: int) -> bool:
        """Take ``key`` if free, or renew it if ``owner`` holds it; True when ``owner`` holds it."""
        return (await self.try_lease(key, owner, ttl_ms)).held

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
        """:meth:`hgetall` of every key, in order (Redis: one pipelined round trip)."""
        return [await self.hgetall(key) for key in keys]

    @abc.abstractmethod
    async def hincrby(self, key: str, fields: dict[str, int], ttl_s: int | None = None) -> None:
        """``HINCRBY`` every field, then ``EXPIRE`` when ``ttl_s`` is set."""

    # -- notifications ----------------------------------------------------------------------

    @abc.abstractmethod
    async def notify(self, channel: str, message: bytes = b"") -> int:
        """Publish a wake-up on ``channel``; returns how many subscribers received it."""

    @abc.abstractmethod
    def subscribe(self, channel: str, callback: Callback) -> Subscription:
        """Follow ``channel`` from now until the returned subscription is closed: ``callback``
        gets each message's bytes, and None on every (re)subscription (messages may have been
        missed). Must be called on the running event loop."""

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
            # redis://, rediss://, unix:// or redis+sentinel:// (routing/redis_conn.py).
            self.redis: aioredis.Redis = connect(
                url_or_client, connect_timeout=connect_timeout, socket_timeout=socket_timeout
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

    def script(self, source: str) -> Script:
        """A server-side (Lua) script, run atomically in one round trip; a connection failure
        or a refused script (READONLY, OOM, ...) raises :class:`StoreError`."""
        registered = self.redis.register_script(source)

        async def run(keys: list[str], args: list[Any]) -> Any:
            return await self._run("script", registered(keys=keys, args=args))

        return run

    async def try_lease(self, key: str, owner: str, ttl_ms: int) -> LeaseAnswer:
        res = await self._run("lease", self._acquire(keys=[key], args=[owner, int(ttl_ms)]))
        return LeaseAnswer(bool(int(res[0])), int(res[1]))

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
        async def read() -> list[Any]:
            async with self.redis.pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.hgetall(key)
                return list(await pipe.execute())

        if not keys:
            return []
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

    async def notify(self, channel: str, message: bytes = b"") -> int:
        return int(await self._run("publish", self.redis.publish(channel, message)))

    def subscribe(self, channel: str, callback: Callback) -> Subscription:
        return RedisSubscription(self.redis, channel, callback)

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
        self.subscribers: dict[str, list[LocalSubscription]] = {}

    def expire_due(self, now: float | None = None) -> None:
        now = self.clock() if now is None else now
        for key in [k for k, at in self.expires.items() if at <= now]:
            del self.expires[key]
            self.strings.pop(key, None)
            self.hashes.pop(key, None)

    async def try_lease(self, key: str, owner: str, ttl_ms: int) -> LeaseAnswer:
        self.expire_due()
        current = self.strings.get(key)
        if current is not None and current != owner.encode():
            at = self.expires.get(key)
            return LeaseAnswer(False, -1 if at is None else int((at - self.clock()) * 1000))
        self.strings[key] = owner.encode()
        self.expires[key] = self.clock() + ttl_ms / 1000
        return LeaseAnswer(True, int(ttl_ms))

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

    def hset_now(self, key: str, fields: dict[str, int], ttl_s: int | None, now: float) -> None:
        """Synchronous ``HSET`` (then ``EXPIRE`` when ``ttl_s``) at ``now``."""
        self.expire_due(now)
        self.hashes.setdefault(key, {}).update(fields)
        if ttl_s is not None:
            self.expires[key] = now + ttl_s

    async def notify(self, channel: str, message: bytes = b"") -> int:
        subs = list(self.subscribers.get(channel, ()))
        for sub in subs:
            sub.publish(bytes(message))
        return len(subs)

    def subscribe(self, channel: str, callback: Callback) -> Subscription:
        return LocalSubscription(self.subscribers, channel, callback)

    def __repr__(self) -> str:
        return f"MemoryRuntimeState(strings={len(self.strings)}, hashes={len(self.hashes)})"


def runtime_for(store: RouteStore) -> RuntimeState:
    """Runtime state beside a route store (:meth:`RouteStore.runtime_state`): on its Redis
    client (shared, not owned), or a new in-process state for an in-process store."""
    return store.runtime_state()
