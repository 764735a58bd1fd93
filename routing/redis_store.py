"""Route store in Redis: ``routes`` hash + ``routes:log`` stream + ``epoch`` string.

Publishing is one server-side script, atomic like MULTI/EXEC, that checks the version, writes the
hash and appends the full record to the stream: an older version can never overwrite a newer one,
even when two admins race, and a reader can never see the hash and the log disagree.
A full publish builds a temporary hash and swaps it in with ``RENAME`` inside MULTI, together with
the new epoch and an epoch marker in the log, so gateways never observe a half-written table.
"""

from __future__ import annotations

import functools
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable
from typing import TYPE_CHECKING, Any, Final, ParamSpec, TypeVar

import redis.asyncio as aioredis
from redis.exceptions import NoPermissionError, RedisError, ResponseError

from routing.errors import StaleVersionError, StoreError
from routing.hostnames import validate_hostname
from routing.keys import Keys
from routing.models import RouteRecord, encode_record
from routing.redis_conn import connect, redact_url

if TYPE_CHECKING:
    from routing.runtime_state import RuntimeState

from routing.store import (
    DEFAULT_MAXLEN,
    SCAN_BATCH,
    ZERO_ID,
    LogEntry,
    RouteStore,
    StoreIdentity,
    SyncPoint,
    new_epoch,
)

log = logging.getLogger("turnout.routing.redis_store")

# KEYS: routes, versions, log.  ARGV: host, version, record ("" = delete), maxlen.
# Returns {1, id} when written, {0, current_version} when stale.
_PUBLISH_LUA = """
local cur = redis.call('HGET', KEYS[2], ARGV[1])
if cur and tonumber(cur) >= tonumber(ARGV[2]) then
  return {0, cur}
end
if ARGV[3] == '' then
  redis.call('HDEL', KEYS[1], ARGV[1])
else
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
local id = redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[4], '*',
                      'host', ARGV[1], 'version', ARGV[2], 'record', ARGV[3])
return {1, id}
"""

_P = ParamSpec("_P")
_T = TypeVar("_T")
# What a Redis call can fail with; the store raises StoreError instead (one error for callers).
_ERRORS: Final = (RedisError, OSError, TimeoutError)


def _store_errors(
    what: str,
) -> Callable[[Callable[_P, Awaitable[_T]]], Callable[_P, Coroutine[Any, Any, _T]]]:
    """Turn a Redis failure of the decorated method into :class:`StoreError`."""

    def wrap(fn: Callable[_P, Awaitable[_T]]) -> Callable[_P, Coroutine[Any, Any, _T]]:
        @functools.wraps(fn)
        async def run(*args: _P.args, **kwargs: _P.kwargs) -> _T:
            try:
                return await fn(*args, **kwargs)
            except _ERRORS as exc:
                raise StoreError(f"redis {what} failed: {exc}") from exc

        return run

    return wrap


class RedisRouteStore(RouteStore):
    """Route store backed by Redis. Owns its client unless one is passed in."""

    def __init__(
        self,
        url_or_client: str | aioredis.Redis,
        *,
        prefix: str = "turnout",
        maxlen: int = DEFAULT_MAXLEN,
        connect_timeout: float = 2.0,
        socket_timeout: float = 10.0,
    ) -> None:
        self.keys = Keys(prefix)
        self.maxlen = maxlen
        if isinstance(url_or_client, str):
            self._owned = True
            # redis://, rediss://, unix:// or redis+sentinel:// (routing/redis_conn.py).
            self.redis: aioredis.Redis = connect(
                url_or_client, connect_timeout=connect_timeout, socket_timeout=socket_timeout
            )
            self.url = redact_url(url_or_client)  # for repr and logs: never the password
        else:
            self._owned = False
            self.redis = url_or_client
            self.url = "<client>"
        self._publish = self.redis.register_script(_PUBLISH_LUA)
        self._info_refused = False  # the ACL user may not run INFO: no origin checks then

    @_store_errors("publish")
    async def _write(self, host: str, version: int, data: bytes) -> str:
        k = self.keys
        try:
            res = await self._publish(
                keys=[k.routes, k.versions, k.log], args=[host, version, data, self.maxlen]
            )
        except ResponseError as exc:
            raise StoreError(f"publish of {host} failed: {exc}") from exc
        ok, value = res
        if not ok:
            raise StaleVersionError(host, version, int(value))
        return value.decode() if isinstance(value, bytes) else str(value)

    async def publish(self, record: RouteRecord) -> str:
        return await self._write(record.host, record.version, encode_record(record))

    async def delete(self, host: str, version: int) -> str:
        validate_hostname(host)
        return await self._write(host, version, b"")

    @_store_errors("replace_all")
    async def replace_all(self, records: Iterable[RouteRecord], epoch: str | None = None) -> str:
        epoch = epoch or new_epoch()
        k = self.keys
        server = await self._server_id()
        suffix = uuid.uuid4().hex
        tmp_routes, tmp_versions = f"{k.routes}:tmp:{suffix}", f"{k.versions}:tmp:{suffix}"
        count = 0
        try:
            batch_r: dict[str, bytes] = {}
            batch_v: dict[str, int] = {}
            for record in records:
                batch_r[record.host] = encode_record(record)
                batch_v[record.host] = record.version
                count += 1
                if len(batch_r) >= 1000:
                    await self._fill(tmp_routes, tmp_versions, batch_r, batch_v)
                    batch_r, batch_v = {}, {}
            if batch_r:
                await self._fill(tmp_routes, tmp_versions, batch_r, batch_v)
            async with self.redis.pipeline(transaction=True) as tx:
                if count:
                    tx.rename(tmp_routes, k.routes)
                    tx.rename(tmp_versions, k.versions)
                else:
                    tx.delete(k.routes, k.versions)
                tx.set(k.epoch, epoch)
                if server is not None:
                    tx.set(k.origin, server)
                tx.xadd(k.log, {"epoch": epoch}, maxlen=self.maxlen, approximate=True)
                await tx.execute()
        finally:
            await self.redis.delete(tmp_routes, tmp_versions)
        return epoch

    async def _fill(
        self, tmp_r: str, tmp_v: str, routes: dict[str, bytes], versions: dict[str, int]
    ) -> None:
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hset(tmp_r, mapping=routes)  # type: ignore[arg-type]
            pipe.hset(tmp_v, mapping=versions)  # type: ignore[arg-type]
            await pipe.execute()

    @_store_errors("get")
    async def get(self, host: str) -> bytes | None:
        value: bytes | None = await self.redis.hget(self.keys.routes, host)  # type: ignore[assignment]
        return value

    async def scan(self, batch: int = 1000) -> AsyncIterator[list[tuple[str, bytes]]]:
        cursor = 0
        while True:
            try:
                res: Any = await self.redis.hscan(self.keys.routes, cursor, count=batch)
            except _ERRORS as exc:
                raise StoreError(f"redis scan failed: {exc}") from exc
            cursor, items = res
            if items:
                yield [(h.decode(), v) for h, v in items.items()]
            if cursor == 0:
                return

    async def scan_raw(self, batch: int = SCAN_BATCH) -> AsyncIterator[list[tuple[bytes, bytes]]]:
        """Every (host, record) as stored, neither decoded: HSCAN steps of ``batch``. With
        ``hiredis`` installed (a dependency) redis-py parses a step's reply in C, ~0.1 us per
        element; its pure-Python parser costs ~5 us per element, two thirds of a million-record
        sync (benchmarks/RESULTS.md)."""
        routes = self.keys.routes
        cursor = 0
        while True:
            try:
                res: Any = await self.redis.hscan(routes, cursor, count=batch)
            except _ERRORS as exc:
                raise StoreError(f"redis scan failed: {exc}") from exc
            cursor, found = res
            if found:
                yield list(found.items())
            if cursor == 0:
                return

    @_store_errors("sync_point")
    async def sync_point(self) -> SyncPoint:
        k = self.keys
        async with self.redis.pipeline(transaction=True) as tx:
            tx.get(k.epoch)
            tx.xrange(k.log, "-", "+", count=1)
            tx.xrevrange(k.log, "+", "-", count=1)
            epoch, first, last = await tx.execute()
        return SyncPoint(
            epoch.decode() if epoch is not None else None,
            _id(first[0][0]) if first else None,
            _id(last[0][0]) if last else ZERO_ID,
        )

    @_store_errors("read_log")
    async def read_log(self, after: str, count: int, block_ms: int) -> list[LogEntry]:
        res: Any = await self.redis.xread(
            {self.keys.log: after}, count=count, block=block_ms if block_ms > 0 else None
        )
        if not res:
            return []
        out: list[LogEntry] = []
        for _stream, entries in res:
            for raw_id, fields in entries:
                out.append(_entry(_id(raw_id), fields))
        return out

    @_store_errors("get_epoch")
    async def get_epoch(self) -> str | None:
        value: Any = await self.redis.get(self.keys.epoch)
        return value.decode() if value is not None else None

    @_store_errors("set_epoch")
    async def set_epoch(self, epoch: str) -> None:
        await self.redis.set(self.keys.epoch, epoch)

    async def _server_id(self) -> str | None:
        """The answering server's ``run_id`` (None when the ACL refuses ``INFO``)."""
        if self._info_refused:
            return None
        try:
            info: Any = await self.redis.info("server")
        except NoPermissionError:
            self._info_refused = True
            log.warning("the Redis user may not run INFO: no check for writes lost in failovers")
            return None
        run_id = info.get("run_id")
        return str(run_id) if run_id else None

    @_store_errors("identity")
    async def identity(self) -> StoreIdentity:
        k = self.keys
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.get(k.epoch)
            pipe.get(k.origin)
            epoch, origin = await pipe.execute()
        server = await self._server_id()
        return StoreIdentity(
            epoch.decode() if epoch is not None else None,
            origin.decode() if origin is not None else None,
            server,
        )

    @_store_errors("set_origin")
    async def set_origin(self, server: str) -> None:
        await self.redis.set(self.keys.origin, server)

    @_store_errors("versions")
    async def versions(self) -> dict[str, int]:
        out: dict[str, int] = {}
        async for host, version in self.redis.hscan_iter(self.keys.versions, count=1000):
            out[host.decode()] = int(version)
        return out

    async def close(self) -> None:
        if self._owned:
            await self.redis.aclose()

    def runtime_state(self) -> RuntimeState:
        """Runtime state on this store's client and key prefix (shared, not owned)."""
        from routing.runtime_state import RedisRuntimeState

        return RedisRuntimeState(self.redis, prefix=self.keys.prefix)

    def __repr__(self) -> str:
        return f"RedisRouteStore({self.url!r}, prefix={self.keys.prefix!r})"


def _id(raw: bytes | str) -> str:
    return raw.decode() if isinstance(raw, bytes) else raw


def _entry(entry_id: str, fields: dict[bytes, bytes]) -> LogEntry:
    try:
        epoch = fields.get(b"epoch")
        if epoch is not None:
            return LogEntry(entry_id, None, 0, None, epoch.decode())
        host = fields.get(b"host", b"").decode("ascii")
        version = int(fields.get(b"version", b"0"))
    except ValueError:  # also UnicodeDecodeError
        # Not written by this store. Raising here would stop every reader of the log at this
        # entry for good; an entry without host or epoch is skipped by the route table.
        log.error("skipping malformed route log entry %s: %r", entry_id, fields)
        return LogEntry(entry_id, None, 0, None)
    record = fields.get(b"record", b"")
    return LogEntry(entry_id, host, version, record or None)
