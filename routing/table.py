"""The in-process route table: host → :class:`CompiledRoute`, kept in step with a route store.

Theory of operation
-------------------
``start()`` cold-starts from the last-known-good snapshot file when there is one (so a gateway
restarted while Redis is down still serves), then a background task connects to the store and
loops: *decide* how to catch up, then *tail* the change log with a blocking read.

On every (re)connect the table compares the store's :class:`SyncPoint` with what it holds:

* same epoch and an unbroken log (our last id is still inside it) → just resume tailing;
* an epoch we do not hold, or a broken log (trimmed past our id, or reset) → full resync: scan
  everything into a *new* dict and swap it in with one assignment (lookups never see a
  half-built table, and the old one is served until the swap);
* no epoch at all while we hold data → the store lost its data (Redis restarted empty or was
  flushed). We keep serving what we have, flagged **stale**, apply newer changes on top, and
  resync when an epoch appears again (the admin's reconciler republishes everything).

While tailing, an epoch marker in the log, or the once-a-second check of the sync point,
triggers the same decision. Connection errors reconnect with capped exponential backoff and
jitter; through a ``redis+sentinel://`` URL every reconnect asks the Sentinels for the current
primary, so a failover needs no restart. Records apply only when their version is newer than the one held. A snapshot of the
table is written (atomically, off the event loop) at most once per ``snapshot_interval`` when
something changed, and less often for very large tables (at least 20× the last write's cost).

Memory: routes are kept only in compiled form (the snapshot re-encodes them), and equal
immutable parts are shared through an :class:`~routing.compiled.Interner` that every full load
renews, so values of a replaced table generation are not pinned by it for long.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import gc
import logging
import random
import time
from collections.abc import Callable
from typing import Any

from redis.exceptions import RedisError

from routing.compiled import CompiledRoute, Interner, find_route
from routing.errors import RecordError, RoutingError, StoreError
from routing.models import RouteRecord, decode_record
from routing.snapshot import read_snapshot, write_snapshot
from routing.store import ZERO_ID, LogEntry, RouteStore, SyncPoint, parse_id
from routing.upstreams import UpstreamRegistry

log = logging.getLogger("turnout.routing.table")

_CONN_ERRORS = (OSError, RedisError, StoreError, TimeoutError, asyncio.TimeoutError)


class TableState(enum.StrEnum):
    """Where a route table stands (:attr:`RouteTable.state`; ``/readyz`` ``table.state`` and the
    ``turnout_route_table_state`` metric). Derived in one place from the table's flags."""

    COLD = "cold"  # nothing to serve yet: no snapshot loaded, no sync from the store
    SNAPSHOT = "snapshot"  # serving a snapshot file; not synced from the store yet
    CURRENT = "current"  # synced, and following the store's change log without a gap
    STALE = "stale"  # synced once, not known-current now (store unreachable, a log gap)
    LOST = "lost"  # the store lost its data: serving what was held until a full publish


class RouteTable:
    """Per-worker route table. ``lookup`` is the hot path; everything else is background."""

    def __init__(
        self,
        store: RouteStore,
        *,
        registry: UpstreamRegistry | None = None,
        snapshot_path: str | None = None,
        snapshot_interval: float = 1.0,
        block_ms: int = 1000,
        check_interval: float = 1.0,
        backoff_initial: float = 0.05,
        # Capped at 1 s: after a Sentinel failover the new primary is there within seconds,
        # and a refused reconnect costs next to nothing; a 5 s cap added up to 5 s of stale
        # routes per failover (benchmarks/chaos.py).
        backoff_max: float = 1.0,
        batch: int = 1000,
        clock: Callable[[], float] = time.monotonic,
        freeze_gc: bool = False,
    ) -> None:
        self.store = store
        # Move the table's long-lived objects out of the cyclic GC's reach after every full
        # load (gc.freeze): full collections would otherwise rescan millions of them.
        self.freeze_gc = freeze_gc
        self.registry = registry or UpstreamRegistry()
        # Shares equal immutable parts between compiled routes; renewed with every full load.
        self.interner = Interner(self.registry)
        self.routes: dict[bytes, CompiledRoute] = {}
        self.snapshot_path = snapshot_path
        self.snapshot_interval = snapshot_interval
        self.block_ms = block_ms
        self.check_interval = check_interval
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.batch = batch
        self.clock = clock
        # state
        self.epoch: str | None = None
        self.last_id: str | None = None  # None until we have a position in the log
        self.connected = False
        self.synced = False  # a sync from the store completed at least once
        self.from_snapshot = False
        self.stale = False
        self._stale_since: float | None = None
        # counters
        self.resyncs = 0
        self.applied = 0
        self.ignored = 0
        self.invalid = 0
        self.reconnects = 0
        self.last_version = 0
        self.snapshots_written = 0
        self.last_sync_seconds = 0.0
        # background
        self._task: asyncio.Task[None] | None = None
        self._snap_task: asyncio.Task[None] | None = None
        self._snap_write: asyncio.Future[None] | None = None  # a snapshot write in its thread
        self._ready = asyncio.Event()
        self._dirty = False
        self._snap_cost = 0.0
        self._closing = False
        self._lost = False  # the store lost its data; stale until a full publish

    # ------------------------------------------------------------------ hot path

    def lookup(self, host: bytes) -> CompiledRoute | None:
        """Exact host first, then the wildcard of its parent domain; nothing further."""
        return find_route(self.routes, host)

    # ------------------------------------------------------------------ lifecycle

    @property
    def ready(self) -> bool:
        """Synced from the store at least once, or serving a loaded snapshot."""
        return self.synced or self.from_snapshot

    @property
    def state(self) -> TableState:
        """The table's :class:`TableState` (lost, then snapshot, cold, stale, current)."""
        if self._lost:
            return TableState.LOST
        if self.from_snapshot:
            return TableState.SNAPSHOT
        if not self.synced:
            return TableState.COLD
        if self.stale:
            return TableState.STALE
        return TableState.CURRENT

    def staleness(self) -> float:
        """Seconds since the table stopped being known-current (0 when current)."""
        if self._stale_since is None:
            return 0.0
        return max(0.0, self.clock() - self._stale_since)

    async def start(self, wait: float = 5.0) -> bool:
        """Load the snapshot (if any), start syncing; wait up to ``wait`` s for readiness."""
        if self.snapshot_path:
            self._load_snapshot()
        self._task = asyncio.create_task(self._run(), name="route-table")
        if self.snapshot_path:
            self._snap_task = asyncio.create_task(self._snapshot_loop(), name="route-snapshot")
        if not self.ready:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._ready.wait(), wait)
        return self.ready

    async def stop(self) -> None:
        self._closing = True
        for task in (self._task, self._snap_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._task = self._snap_task = None
        if self._snap_write is not None:
            # Cancelling the loop does not stop its thread: let that older write land first,
            # or it would replace the final snapshot below after we return.
            with contextlib.suppress(Exception):
                await self._snap_write
            self._snap_write = None
        if self.snapshot_path and self._dirty:
            self._dirty = False
            await asyncio.to_thread(self._write_snapshot_now, *self._snapshot_state())

    async def wait_synced(self, timeout: float = 5.0) -> None:
        """Test/CLI helper: wait until a store sync has completed."""
        deadline = time.monotonic() + timeout
        while not self.synced or self.stale:
            if time.monotonic() > deadline:
                raise TimeoutError("route table did not sync in time")
            await asyncio.sleep(0.01)

    def stats(self) -> dict[str, Any]:
        return {
            "state": self.state.value,
            "records": len(self.routes),
            "epoch": self.epoch,
            "last_id": self.last_id,
            "last_version": self.last_version,
            "connected": self.connected,
            "synced": self.synced,
            "stale": self.stale,
            "from_snapshot": self.from_snapshot,
            "staleness_seconds": round(self.staleness(), 3),
            "resyncs": self.resyncs,
            "reconnects": self.reconnects,
            "applied": self.applied,
            "ignored": self.ignored,
            "invalid": self.invalid,
            "snapshots_written": self.snapshots_written,
            "last_sync_seconds": round(self.last_sync_seconds, 4),
        }

    # ------------------------------------------------------------------ background loop

    async def _run(self) -> None:
        backoff = self.backoff_initial
        while not self._closing:
            try:
                point = await self.store.sync_point()
                if not self.connected and self.synced:
                    self.reconnects += 1
                self.connected = True
                await self._catch_up(point)
                backoff = self.backoff_initial
                await self._tail()
            except asyncio.CancelledError:
                raise
            except _CONN_ERRORS as exc:
                self._disconnected(exc)
                await asyncio.sleep(backoff * (0.5 + random.random()))
                backoff = min(backoff * 2, self.backoff_max)

    def _disconnected(self, exc: BaseException) -> None:
        if self.connected or self._stale_since is None:
            log.warning(
                "route store unreachable (%s: %s); serving last-known-good table",
                type(exc).__name__,
                exc,
            )
        self.connected = False
        if self._stale_since is None:
            self._stale_since = self.clock()

    def _continuous(self, point: SyncPoint, since: str | None = None) -> bool:
        """Is every log entry after our last id still in the store's log?

        ``since`` (default: our last id) is the oldest position whose successors we may have
        read without knowing they were all still there: XREAD silently skips trimmed entries,
        so a tail that has read past a gap only notices it by comparing with where it was.
        """
        if self.last_id is None:
            return False
        ours = parse_id(self.last_id)
        if parse_id(point.last_id) < ours:
            return False  # the log was reset (Redis restarted or was flushed)
        # Trimmed past us (we may have missed entries)? Reading from 0-0 means "from the start".
        start = ours if since is None else parse_id(since)
        trimmed = point.first_id is not None and parse_id(point.first_id) > start != (0, 0)
        return not trimmed

    async def _catch_up(self, point: SyncPoint, since: str | None = None) -> bool:
        """Bring the table up to ``point``; returns True when it did a full resync."""
        if point.epoch is not None:
            if point.epoch == self.epoch and not self._lost and self._continuous(point, since):
                self._mark_current()
                return False
            await self._full_sync(point)
            return True
        if (
            self._lost
            or self.epoch is not None
            or (self.routes and not self._continuous(point, since))
        ):
            # The store lost its data. Never blank the table: keep it, flag it stale, follow
            # whatever gets published from now on, wait for a full publish (a new epoch).
            if not self._lost:
                log.warning(
                    "route store has no epoch (lost its data?); keeping %d routes, stale",
                    len(self.routes),
                )
                self._lost = True
                self.epoch = None
            self.stale = True
            if self._stale_since is None:
                self._stale_since = self.clock()
            if not self._continuous(point, since):
                self.last_id = ZERO_ID  # read the new log from its start; versions gate it
            self._ready.set()
            return False
        if self._continuous(point, since):
            self._mark_current()  # a store that never had an epoch, unbroken log
            return False
        await self._full_sync(point)  # nothing held and no epoch: load whatever is there
        return True

    def _mark_current(self) -> None:
        self.stale = False
        self._stale_since = None
        self.synced = True
        self._ready.set()

    async def _full_sync(self, point: SyncPoint) -> None:
        started = time.perf_counter()
        fresh: dict[bytes, CompiledRoute] = {}
        interner = Interner(self.registry)
        async for items in self.store.scan(self.batch):
            # Building many long-lived objects makes the cyclic GC rescan the whole heap over
            # and over (~40 % of a 1M-record sync); these objects form no cycles.
            gc_was_enabled = gc.isenabled()
            gc.disable()
            try:
                for host, data in items:
                    route = self._compile(host, data, interner)
                    if route is not None:
                        fresh[route.host_b] = route
            finally:
                if gc_was_enabled:
                    gc.enable()
        # One assignment: lookups see the old table or the new one, never a mix.
        self.routes = fresh
        self.interner = interner
        if self.freeze_gc:
            gc.collect()  # what is garbage now must not be frozen with the table
            gc.freeze()
        if self.synced or self.from_snapshot:
            self.resyncs += 1
        self.epoch = point.epoch
        self.last_id = point.last_id
        self.from_snapshot = False
        self._lost = False
        self._dirty = True
        self.last_sync_seconds = time.perf_counter() - started
        log.info(
            "route table synced: %d records in %.3fs (epoch %s)",
            len(fresh),
            self.last_sync_seconds,
            point.epoch,
        )
        self._mark_current()

    def _compile(
        self, host: str, data: bytes, interner: Interner | None = None
    ) -> CompiledRoute | None:
        try:
            record = decode_record(data)
        except RecordError as exc:
            self.invalid += 1
            log.error("ignoring invalid route record for %s: %s", host, exc)
            return None
        if record.host != host:
            self.invalid += 1
            log.error("ignoring route record filed under %s but naming %s", host, record.host)
            return None
        return CompiledRoute(record, self.registry, interner or self.interner)

    async def _tail(self) -> None:
        next_check = self.clock() + self.check_interval
        # Position at the last check: the log then still held everything after it.
        checked = self.last_id
        while not self._closing:
            assert self.last_id is not None
            entries = await self.store.read_log(self.last_id, self.batch, self.block_ms)
            for entry in entries:
                if entry.epoch is not None:
                    if entry.epoch != self.epoch or self._lost:
                        log.info("new epoch %s in the log; resyncing", entry.epoch)
                        await self._full_sync(await self.store.sync_point())
                        return
                    self.last_id = entry.id
                    continue
                self._apply(entry)
                self.last_id = entry.id
            now = self.clock()
            if now >= next_check or len(entries) >= self.batch:
                next_check = now + self.check_interval
                point = await self.store.sync_point()
                if (
                    point.epoch != self.epoch or not self._continuous(point, checked)
                ) and await self._catch_up(point, checked):
                    return  # resynced: restart the tail from the new position
                checked = self.last_id

    def _apply(self, entry: LogEntry) -> None:
        host = entry.host
        if not host:
            return
        key = host.encode("ascii")
        current = self.routes.get(key)
        if current is not None and entry.version <= current.version:
            self.ignored += 1
            return
        if entry.record is None:
            if current is not None:
                del self.routes[key]
                self.applied += 1
                self.last_version = entry.version
                self._dirty = True
            return
        route = self._compile(host, entry.record)
        if route is None:
            return
        if route.version != entry.version:
            log.warning(
                "log entry for %s says version %d, record says %d; using the record",
                host,
                entry.version,
                route.version,
            )
            if current is not None and route.version <= current.version:
                self.ignored += 1
                return
        self.routes[route.host_b] = route
        self.applied += 1
        self.last_version = route.version
        self._dirty = True

    # ------------------------------------------------------------------ snapshot

    def _load_snapshot(self) -> None:
        assert self.snapshot_path is not None
        interner = Interner(self.registry)
        routes: dict[bytes, CompiledRoute] = {}

        def keep(record: RouteRecord) -> None:
            route = CompiledRoute(record, self.registry, interner)
            routes[route.host_b] = route

        try:
            snap = read_snapshot(self.snapshot_path, keep)
        except RoutingError as exc:
            log.info("no usable route snapshot: %s", exc)
            return
        self.routes = routes
        self.interner = interner
        self.epoch = snap.epoch
        self.last_id = snap.last_id
        self.from_snapshot = True
        if self.freeze_gc:
            gc.collect()
            gc.freeze()
        self.stale = True
        age = max(0.0, time.time() - snap.written_at)
        self._stale_since = self.clock() - age
        log.warning(
            "serving %d routes from snapshot %s (%.0fs old, %d bad lines)",
            len(self.routes),
            self.snapshot_path,
            age,
            snap.bad_lines,
        )
        self._ready.set()

    async def _snapshot_loop(self) -> None:
        last = 0.0
        while True:
            await asyncio.sleep(min(self.snapshot_interval, 0.25))
            now = self.clock()
            interval = max(self.snapshot_interval, 20 * self._snap_cost)
            if not self._dirty or now - last < interval or not self.synced:
                continue
            self._dirty = False
            # Routes, epoch and last id captured together, here on the loop: a file must never
            # claim a log position whose changes it lacks (a cold start resumes from there).
            self._snap_write = asyncio.ensure_future(
                asyncio.to_thread(self._write_snapshot_now, *self._snapshot_state())
            )
            try:
                await asyncio.shield(self._snap_write)  # stop() waits for it, see there
            except OSError as exc:
                self._dirty = True
                log.error("writing route snapshot %s failed: %s", self.snapshot_path, exc)
            last = self.clock()

    def _snapshot_state(self) -> tuple[list[CompiledRoute], str | None, str | None]:
        return list(self.routes.values()), self.epoch, self.last_id

    def _write_snapshot_now(
        self, routes: list[CompiledRoute], epoch: str | None, last_id: str | None
    ) -> None:
        # Runs in a thread: touches no table state but its own counters. (Clearing _dirty
        # here would lose a change applied on the loop while this write was running.)
        assert self.snapshot_path is not None
        started = time.perf_counter()
        write_snapshot(self.snapshot_path, epoch, last_id, (r.encode() for r in routes))
        self._snap_cost = time.perf_counter() - started
        self.snapshots_written += 1

    def __repr__(self) -> str:
        return (
            f"RouteTable(records={len(self.routes)}, epoch={self.epoch!r}, "
            f"last_id={self.last_id!r}, stale={self.stale}, connected={self.connected})"
        )
