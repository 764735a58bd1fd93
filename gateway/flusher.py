"""Background flush of :class:`~gateway.counters.Counters` to the store, once per interval.

Theory of operation
-------------------
Requests only ever touch the in-memory :class:`Counters` (a few dict operations, no I/O). A
background task wakes every ``interval`` seconds, swaps the batch out with ``take()`` and hands
it to a :class:`CounterSink`, which writes everything in one round trip (the Redis sink plans
it a slice of keys at a time, yielding to the event loop in between, so thousands of active
deployments never stall requests for long: :func:`plan_writes_sliced`):

* ``{prefix}:usage:<space>:<yyyymm>``: ``HSET wfp_requests:<writer> <cumulative>`` per space,
  from the sink's :class:`~gateway.usage.UsageLedger` (idempotent: see :mod:`gateway.usage`),
  then ``EXPIRE`` (35 days);
* ``{prefix}:health:<deployment>:<epoch-minute>``: ``HINCRBY`` of ``total``, ``2xx``, ``4xx``,
  ``5xx``, ``timeouts``, ``latency_ms_sum`` (integer ms) and the latency histogram's non-empty
  ``lat_<i>`` buckets, then ``EXPIRE 1800`` (the format: :mod:`routing.health`).

Month and minute are those of the flush time (UTC), not of each request: a request counted in
the last second of a minute may land in the next one. Absent hash fields mean zero.

When the write fails (Redis down, connection reset, OOM) the batch is merged back into the
counters with ``give_back()`` — bounded by ``Counters.max_keys`` — and retried with the next
flush, so a store outage loses nothing until that bound is hit. Health delivery is
at-least-once: a connection that drops after Redis applied the pipeline but before the reply
arrived makes the next flush count that batch again. Usage is exactly-once: its values are
cumulative (re-writing one changes nothing), and the ledger only takes them as written once the
sink succeeded. When only *some* commands of a pipeline fail (a key of the wrong type), the rest
were applied, so the batch is not given back: retrying would double-count the applied part and
fail the same way forever.

``stop()`` cancels the loop, lets an in-flight write finish and does one last flush, all within
``timeout`` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Protocol

import orjson
from redis.exceptions import RedisError

from gateway.counters import (
    Counters,
    Key,
    Row,
    add_fields,
    epoch_minute,
    field_args,
    health_fields,
)
from gateway.usage import USAGE_METER, USAGE_TTL, Staged, UsageLedger
from routing.errors import StoreError
from routing.health import HEALTH_TTL
from routing.keys import Keys
from routing.runtime_state import MemoryRuntimeState, RedisRuntimeState

log = logging.getLogger("turnout.gateway.flusher")

Batch = dict[Key, Row]

_WRITE_ERRORS: Final = (StoreError, RedisError, OSError, TimeoutError)
# Batch keys (or plan items) handled between two yields to the event loop during a flush.
PLAN_SLICE: Final = 256

__all__ = [
    "HEALTH_TTL",
    "USAGE_METER",
    "CounterFlusher",
    "CounterSink",
    "HashIncrements",
    "MemoryCounterSink",
    "PartialWriteError",
    "RedisCounterSink",
    "plan_writes",
    "plan_writes_sliced",
    "usage_month",
    "usage_sums",
]


class PartialWriteError(Exception):
    """Some commands of a flush were applied and some failed: the batch must not be retried."""


class CounterSink(Protocol):
    """Where flushed counters go. ``write`` raises on failure (nothing or everything applied),
    or :class:`PartialWriteError` when part of the batch was applied."""

    async def write(self, batch: Batch, now: float) -> None: ...


@dataclass(frozen=True, slots=True)
class HashIncrements:
    """``HINCRBY key field n`` (``HSET`` when ``set``) for every field, then ``EXPIRE key ttl``
    when ``ttl`` is set."""

    key: str
    fields: dict[str, int]
    ttl: int | None = None
    set: bool = False


def usage_month(now: float) -> str:
    """``yyyymm`` of ``now`` (epoch seconds) in UTC."""
    return time.strftime("%Y%m", time.gmtime(now))


def _decode(ident: bytes) -> str:
    return ident.decode("utf-8", "replace")


def usage_sums(batch: Batch) -> dict[str, int]:
    """Forwarded requests per space in ``batch`` (rows without an owner bill no one)."""
    usage: dict[str, int] = {}
    for (space, _service, _deployment), row in batch.items():
        if space and row.requests:
            name = _decode(space)
            usage[name] = usage.get(name, 0) + row.requests
    return usage


def plan_writes(
    batch: Batch, now: float, keys: Keys, usage: Staged | None = None
) -> list[HashIncrements]:
    """Turn a counter batch into hash writes (shared by every sink, so they agree): the staged
    usage values (``HSET``, see :mod:`gateway.usage`) and the health increments."""
    plan = _usage_writes(keys, usage)
    minute = epoch_minute(now)
    for deployment, fields in health_fields(batch).items():
        plan.append(_health_write(keys, deployment, minute, fields))
    return plan


async def plan_writes_sliced(
    batch: Batch, now: float, keys: Keys, usage: Staged | None = None, size: int = PLAN_SLICE
) -> list[HashIncrements]:
    """:func:`plan_writes` ``size`` batch keys at a time, yielding to the event loop between
    slices, so a flush of thousands of active deployments never holds up requests for more
    than a slice's worth (~0.7 ms per 256 keys, compiled). The same writes: a deployment
    counted in two slices gets its fields summed into one item (only the order of its fields
    can differ, which no hash write sees)."""
    items = list(batch.items())
    health: dict[bytes, dict[str, int]] = {}
    for start in range(0, len(items), size):
        if start:
            await asyncio.sleep(0)
        add_fields(health, health_fields(dict(items[start : start + size])))
    plan = _usage_writes(keys, usage)
    minute = epoch_minute(now)
    for n, (deployment, fields) in enumerate(health.items()):
        if n and n % size == 0:
            await asyncio.sleep(0)
        plan.append(_health_write(keys, deployment, minute, fields))
    return plan


def _usage_writes(keys: Keys, usage: Staged | None) -> list[HashIncrements]:
    if usage is None:
        return []
    field = usage.field
    return [
        HashIncrements(keys.usage(space, month), {field: value}, USAGE_TTL, set=True)
        for space, month, value in usage.writes
    ]


def _health_write(
    keys: Keys, deployment: bytes, minute: int, fields: dict[str, int]
) -> HashIncrements:
    return HashIncrements(keys.health(_decode(deployment), minute), fields, ttl=HEALTH_TTL)


# One script call per flush: packing thousands of HINCRBY commands in redis-py cost tens of
# milliseconds of the event loop per second once a gateway served ~1 000 deployments
# (benchmarks/scale.py); a JSON payload decoded by Redis costs one orjson.dumps.
# ARGV[1] = [[key, ttl (0 = none), [field, n, field, n, ...], 1 = HSET else HINCRBY], ...];
# KEYS = those keys, then the epoch key (for Redis Cluster routing; they share one hash tag).
# Returns {commands, failed, first error, epoch ('' when absent)}.
_WRITE_LUA: Final = """
-- A server that refuses every write (a replica after a failover, over maxmemory, no replicas
-- for min-replicas-to-write) refuses the first one: answer an error, so nothing counts as
-- applied. Any other error is one key's (WRONGTYPE): the rest is applied, a partial write.
local function transient(err)
  for _, p in ipairs({'READONLY', 'NOREPLICAS', 'OOM', 'MASTERDOWN', 'LOADING', 'BUSY'}) do
    if string.sub(err, 1, #p) == p then return true end
  end
  return false
end
local items = cjson.decode(ARGV[1])
local done, failed, first = 0, 0, ''
for _, it in ipairs(items) do
  local key, ttl, f = it[1], tonumber(it[2]), it[3]
  local cmd = 'HINCRBY'
  if it[4] == 1 then cmd = 'HSET' end
  for i = 1, #f, 2 do
    local r = redis.pcall(cmd, key, f[i], f[i + 1])
    if type(r) == 'table' and r.err and done == 0 and transient(r.err) then
      return redis.error_reply(r.err)  -- nothing applied: the whole batch is kept and retried
    end
    done = done + 1
    if type(r) == 'table' and r.err then
      failed = failed + 1
      if first == '' then first = r.err end
    end
  end
  if ttl > 0 then redis.pcall('EXPIRE', key, ttl); done = done + 1 end
end
return {done, failed, first, redis.call('GET', KEYS[#KEYS]) or ''}
"""

_UNSEEN: Final = b"\0unseen"  # no epoch observed yet


class RedisCounterSink:
    """Writes a batch with one server-side script call (one round trip, one command).

    Owns this worker's :class:`UsageLedger` (``usage``): staged values are committed once the
    script ran. The script also returns the store's epoch; when it changed or vanished since
    the previous write (Redis lost or replaced its data), every ledger entry is written again
    right away. It runs on the route store's runtime state (``store.runtime_state()``: the
    store's client, which the store owns and closes; its retry policy applies), so every Redis
    failure reaches the flusher as the store's :class:`~routing.errors.StoreError`.
    """

    __slots__ = ("_epoch", "_script", "keys", "usage")

    def __init__(self, runtime: RedisRuntimeState, keys: Keys, usage: UsageLedger | None = None):
        self.keys = keys
        self.usage = usage or UsageLedger()
        self._script = runtime.script(_WRITE_LUA)
        self._epoch = _UNSEEN

    async def write(self, batch: Batch, now: float) -> None:
        month = usage_month(now)
        staged = self.usage.stage(usage_sums(batch), month, now)
        plan = await plan_writes_sliced(batch, now, self.keys, staged)
        if not plan:
            self.usage.commit(staged)
            return
        try:
            epoch = await self._run(plan)
        except PartialWriteError:
            self.usage.commit(staged)  # not retried; the values are re-asserted later anyway
            raise
        self.usage.commit(staged)
        if self._epoch is not _UNSEEN and epoch != self._epoch:
            log.warning("the store's epoch changed: writing every usage total again")
            self.usage.lost()
        self._epoch = epoch
        if staged.full or not self.usage.is_lost:
            return
        again = self.usage.stage({}, month, now)
        # The batch is written: a failure here must not give it back (its health increments
        # would count twice). The ledger stays "lost", so the next flush tries again.
        try:
            await self._run(plan_writes({}, now, self.keys, again))
        except (*_WRITE_ERRORS, PartialWriteError) as exc:
            log.warning("re-asserting usage totals failed (retried next flush): %s", exc)
            return
        self.usage.commit(again)

    async def _run(self, plan: list[HashIncrements]) -> bytes:
        """One script call for ``plan``; returns the epoch it saw (b"" when absent)."""
        items = []
        for n, item in enumerate(plan):
            if n and n % PLAN_SLICE == 0:
                await asyncio.sleep(0)  # as in plan_writes_sliced
            items.append([item.key, item.ttl or 0, field_args(item.fields), 1 if item.set else 0])
        payload = orjson.dumps(items)
        # A connection-level failure or a refused script (e.g. OOM) raises here with nothing
        # applied; per-command errors are counted by the script and come back as a result.
        res = await self._script([*(item.key for item in plan), self.keys.epoch], [payload])
        done, failed, first = int(res[0]), int(res[1]), res[2]
        epoch = res[3] if len(res) > 3 and isinstance(res[3], bytes) else b""
        if not failed:
            return epoch
        if isinstance(first, bytes):
            first = first.decode("utf-8", "replace")
        raise PartialWriteError(f"{failed} of {done} counter writes failed: {first}")

    def __repr__(self) -> str:
        return f"RedisCounterSink({self.keys!r}, {self.usage!r})"


class MemoryCounterSink:
    """Keeps the same hashes as Redis would, in a :class:`MemoryRuntimeState` (embedded dev
    mode and tests). Pass the admin's state to share the hashes with it (``turnout dev``).

    Health hashes expire like their Redis keys (checked on every write and read), so a
    long-running dev gateway does not grow without end.
    """

    __slots__ = ("clock", "keys", "state", "usage", "writes")

    def __init__(
        self,
        keys: Keys | None = None,
        *,
        clock: Callable[[], float] = time.time,
        state: MemoryRuntimeState | None = None,
        usage: UsageLedger | None = None,
    ):
        self.state = state or MemoryRuntimeState(keys, clock=clock)
        self.keys = keys or self.state.keys
        self.clock = clock
        self.usage = usage or UsageLedger()
        self.writes = 0

    @property
    def hashes(self) -> dict[str, dict[str, int]]:
        return self.state.hashes

    async def write(self, batch: Batch, now: float) -> None:
        staged = self.usage.stage(usage_sums(batch), usage_month(now), now)
        for item in plan_writes(batch, now, self.keys, staged):
            if item.set:
                self.state.hset_now(item.key, item.fields, item.ttl, now)
            else:
                self.state.incr_now(item.key, item.fields, item.ttl, now)
        self.usage.commit(staged)
        self.writes += 1

    def hgetall(self, key: str) -> dict[str, int]:
        self.state.expire_due(self.clock())
        return dict(self.state.hashes.get(key, {}))

    def ttl(self, key: str) -> float | None:
        """Seconds left before ``key`` expires; None when it never does (or does not exist)."""
        at = self.state.expires.get(key)
        return None if at is None else max(0.0, at - self.clock())

    def __repr__(self) -> str:
        return f"MemoryCounterSink(keys={len(self.state.hashes)}, writes={self.writes})"


class CounterFlusher:
    """Flushes ``counters`` into ``sink`` every ``interval`` seconds from a background task."""

    def __init__(
        self,
        counters: Counters,
        sink: CounterSink,
        *,
        interval: float = 1.0,
        clock: Callable[[], float] = time.time,
        log_interval: float = 10.0,
    ) -> None:
        if interval <= 0:
            raise ValueError("flush interval must be positive")
        self.counters = counters
        self.sink = sink
        self.interval = interval
        self.clock = clock  # wall clock: it names the usage month and health minute
        self.log_interval = log_interval
        self.flushes = 0  # successful writes of a non-empty batch
        self.flush_errors = 0
        self.last_flush_seconds = 0.0  # duration of the last successful write
        self._task: asyncio.Task[None] | None = None
        self._inflight: asyncio.Task[bool] | None = None
        self._unsettled: Batch | None = None  # taken, not yet written nor given back
        self._lock = asyncio.Lock()
        self._last_log = -math.inf
        self._failing = 0  # consecutive failures, for the "recovered" log line

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        """Start the background loop (on the running event loop)."""
        if self.running:
            raise RuntimeError("counter flusher already started")
        self._task = asyncio.create_task(self._run(), name="counter-flusher")

    async def stop(self, timeout: float = 5.0) -> None:
        """Stop the loop and do a final flush, all within ``timeout`` seconds.

        Counts still unwritten at the deadline stay in ``counters`` (and are lost if the
        process then exits).
        """
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        try:
            async with asyncio.timeout(timeout):
                # Waits for a write the loop had started, then the rest.
                if not await self.flush():
                    # Not rate-limited: these counts are lost when the process exits.
                    log.error(
                        "final counter flush failed; %d counter rows not written",
                        len(self.counters.pending),
                    )
        except TimeoutError:
            inflight = self._inflight
            if inflight is not None and not inflight.done():
                inflight.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await inflight
            if self._unsettled is not None:  # cancelled before it even started
                self.counters.give_back(self._unsettled)
                self._unsettled = None
            log.warning("final counter flush did not finish within %.1fs", timeout)

    async def flush(self) -> bool:
        """Write whatever is pending now; True on success (or nothing to write).

        The write runs in its own task shielded from cancellation of the caller, so cancelling
        the loop never abandons a batch half-way; ``stop()`` waits for it.
        """
        async with self._lock:  # one write at a time, batches in order
            inflight = self._inflight
            if inflight is not None and not inflight.done():
                await asyncio.shield(inflight)  # started by a caller that was cancelled
            batch = self.counters.take()
            if not batch:
                return True
            self._unsettled = batch
            task = asyncio.create_task(self._write(batch), name="counter-flush")
            self._inflight = task
        return await asyncio.shield(task)

    async def _write(self, batch: Batch) -> bool:
        started = time.perf_counter()
        try:
            await self.sink.write(batch, self.clock())
        except asyncio.CancelledError:
            self.counters.give_back(batch)
            raise
        except PartialWriteError as exc:
            self._failed(exc, kept=False)
            return False
        except _WRITE_ERRORS as exc:
            self.counters.give_back(batch)
            self._failed(exc, kept=True)
            return False
        except Exception as exc:  # a bug in a sink must not kill counting; keep the data
            self.counters.give_back(batch)
            self._failed(exc, kept=True, trace=True)
            return False
        finally:
            if self._unsettled is batch:
                self._unsettled = None
        self.last_flush_seconds = time.perf_counter() - started
        self.flushes += 1
        if self._failing:
            log.info("counter flush recovered after %d failed attempts", self._failing)
            self._failing = 0
        return True

    def _failed(self, exc: BaseException, *, kept: bool, trace: bool = False) -> None:
        self.flush_errors += 1
        self._failing += 1
        now = time.monotonic()
        if now - self._last_log < self.log_interval:
            return  # rate-limited: a store outage must not flood the log
        self._last_log = now
        log.warning(
            "counter flush failed (%s: %s); %s; %d failures so far, %d counter keys dropped",
            type(exc).__name__,
            exc,
            "counts kept for the next flush" if kept else "partly written, not retried",
            self.flush_errors,
            self.counters.dropped,
            exc_info=exc if trace else None,
        )

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self.flush()

    def __repr__(self) -> str:
        return (
            f"CounterFlusher(interval={self.interval}, running={self.running}, "
            f"flushes={self.flushes}, flush_errors={self.flush_errors}, sink={self.sink!r})"
        )
