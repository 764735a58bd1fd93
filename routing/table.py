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

Flat mode (``flat=True``, :mod:`routing.flat`): the snapshot file is a memory-mapped flat table
shared by every worker on the host. A full sync by the *writer* (worker 0) streams the store
into a new file and maps it; ``routes`` then holds only the overlay of changes read since, and a
compaction (paced like the snapshot writes) merges the overlay into a new file that every worker
swaps to: the writer at once, the others when their once-a-second look at the file sees a new
one of their epoch. A worker that needs a full sync but is not the writer waits for the writer's
file of that epoch (``flat_wait`` s), then falls back to a sync into memory. An overlay entry
is dropped at a swap only when the new file holds that version or a newer one, so no lookup
ever goes back a version.

Memory: routes are kept only in compiled form (the snapshot re-encodes them), and equal
immutable parts are shared through an :class:`~routing.compiled.Interner` that every full load
renews, so values of a replaced table generation are not pinned by it for long.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import random
import time
from collections.abc import Callable
from typing import Any

from redis.exceptions import RedisError

from routing.compiled import CompiledRoute, Interner
from routing.errors import RecordError, RoutingError, StoreError
from routing.flat import (
    HOT_CACHE,
    ColdRoutes,
    FlatBuilder,
    FlatError,
    FlatFile,
    find_route,
    release_memory,
)
from routing.models import RouteRecord, decode_record
from routing.snapshot import read_snapshot, write_snapshot
from routing.store import SCAN_BATCH, ZERO_ID, LogEntry, RouteStore, SyncPoint, parse_id
from routing.tablestate import TableEvent, TableLifecycle
from routing.tablestate import TableState as TableState  # re-exported: routing.table.TableState
from routing.upstreams import UpstreamRegistry

log = logging.getLogger("turnout.routing.table")

_CONN_ERRORS = (OSError, RedisError, StoreError, TimeoutError, asyncio.TimeoutError)


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
        flat: bool = False,
        flat_writer: bool = True,
        hot_cache: int = HOT_CACHE,
        flat_wait: float = 60.0,
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
        # flat mode: the mapped file's view (None: everything is in ``routes``)
        self.flat = flat and snapshot_path is not None
        self.flat_writer = flat_writer
        self.hot_cache = hot_cache
        self.flat_wait = flat_wait
        self.scan_batch = SCAN_BATCH  # records per batch of a flat full sync's raw scan
        self.cold: ColdRoutes | None = None
        self.compactions = 0
        self.flat_refused = 0
        self._file_lock = asyncio.Lock()
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
        # cold, snapshot, current, stale, lost: set only through the lifecycle's events
        self.lifecycle = TableLifecycle(clock, self._state_changed)
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

    # ------------------------------------------------------------------ hot path

    def lookup(self, host: bytes) -> CompiledRoute | None:
        """Exact host first, then the wildcard of its parent domain; nothing further."""
        return find_route(self.routes, host, self.cold)

    # ------------------------------------------------------------------ lifecycle

    @property
    def state(self) -> TableState:
        """The table's :class:`TableState` (:mod:`routing.tablestate`)."""
        return self.lifecycle.state

    @property
    def ready(self) -> bool:
        """Synced from the store at least once, or serving a loaded snapshot."""
        return self.lifecycle.ready

    @property
    def synced(self) -> bool:
        """A sync from the store completed at least once."""
        return self.lifecycle.synced

    @property
    def from_snapshot(self) -> bool:
        """Serving what a snapshot file held: no full sync has replaced it yet."""
        return self.lifecycle.from_snapshot

    @property
    def stale(self) -> bool:
        """Served but not known to be current (snapshot, stale or lost)."""
        return self.lifecycle.stale

    def staleness(self) -> float:
        """Seconds since the table stopped being known-current (0 when current)."""
        since = self.lifecycle.stale_since
        if since is None:
            return 0.0
        return max(0.0, self.clock() - since)

    def _state_changed(self, old: TableState, new: TableState, event: TableEvent) -> None:
        log.info("route table %s -> %s (%s)", old.value, new.value, event.value)
        if new is not TableState.COLD:
            self._ready.set()

    async def start(self, wait: float = 5.0) -> bool:
        """Load the snapshot (if any), start syncing; wait up to ``wait`` s for readiness."""
        if self.snapshot_path:
            self._load_snapshot()
        self._task = asyncio.create_task(self._run(), name="route-table")
        if self.snapshot_path:
            loop = self._snapshot_loop() if self.flat_writer else self._watch_loop()
            self._snap_task = asyncio.create_task(loop, name="route-snapshot")
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
        if self.snapshot_path and self._dirty and self.flat_writer:
            self._dirty = False
            await self._write_snapshot()

    async def wait_synced(self, timeout: float = 5.0) -> None:
        """Test/CLI helper: wait until a store sync has completed."""
        deadline = time.monotonic() + timeout
        while not self.synced or self.stale:
            if time.monotonic() > deadline:
                raise TimeoutError("route table did not sync in time")
            await asyncio.sleep(0.01)

    def record_count(self) -> int:
        cold = self.cold
        if cold is None:
            return len(self.routes)
        flat = cold.flat
        added = sum(1 for host in self.routes if flat.version(host) < 0)
        return flat.count - len(cold.deleted) + added

    def flat_stats(self) -> dict[str, Any]:
        """What /metrics reports of flat mode (zeros while no file is mapped)."""
        cold = self.cold
        looked = cold.hits + cold.misses if cold is not None else 0
        return {
            "mapped_bytes": cold.flat.size if cold is not None else 0,
            "file_records": cold.flat.count if cold is not None else 0,
            "overlay": len(self.routes) if cold is not None else 0,
            "tombstones": len(cold.deleted) if cold is not None else 0,
            "hot_cache": len(cold.cache) if cold is not None else 0,
            "hot_hits": cold.hits if cold is not None else 0,
            "hot_misses": cold.misses if cold is not None else 0,
            "hot_hit_rate": round(cold.hits / looked, 4) if cold is not None and looked else 0.0,
            "compactions": self.compactions,
            "refused_files": self.flat_refused,
        }

    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "state": self.state.value,
            "records": self.record_count(),
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
        if self.flat:
            out["flat"] = self.flat_stats()
        return out

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
        if self.connected or self.lifecycle.stale_since is None:
            log.warning(
                "route store unreachable (%s: %s); serving last-known-good table",
                type(exc).__name__,
                exc,
            )
        self.connected = False
        self.lifecycle.connection_lost()

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
        lost = self.state is TableState.LOST
        if point.epoch is not None:
            if point.epoch == self.epoch and not lost and self._continuous(point, since):
                self.lifecycle.caught_up()
                return False
            await self._full_sync(point)
            return True
        if lost or self.epoch is not None or (self.routes and not self._continuous(point, since)):
            # The store lost its data. Never blank the table: keep it, flag it stale, follow
            # whatever gets published from now on, wait for a full publish (a new epoch).
            if not lost:
                log.warning(
                    "route store has no epoch (lost its data?); keeping %d routes, stale",
                    len(self.routes),
                )
                self.epoch = None
            self.lifecycle.store_lost()
            if not self._continuous(point, since):
                self.last_id = ZERO_ID  # read the new log from its start; versions gate it
            return False
        if self._continuous(point, since):
            self.lifecycle.caught_up()  # a store that never had an epoch, unbroken log
            return False
        await self._full_sync(point)  # nothing held and no epoch: load whatever is there
        return True

    async def _full_sync(self, point: SyncPoint) -> None:
        started = time.perf_counter()
        if self.flat:
            last_id = await self._flat_sync(point)
            if last_id is not None:
                self._synced(point, started, last_id, dirty=False)  # the file is the sync
                return
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
        self.cold = None
        self.interner = interner
        if self.freeze_gc:
            gc.collect()  # what is garbage now must not be frozen with the table
            gc.freeze()
        self._synced(point, started, point.last_id)

    def _synced(
        self, point: SyncPoint, started: float, last_id: str, *, dirty: bool = True
    ) -> None:
        if self.synced or self.from_snapshot:
            self.resyncs += 1
        self.epoch = point.epoch
        self.last_id = last_id
        self._dirty = dirty
        self.last_sync_seconds = time.perf_counter() - started
        log.info(
            "route table synced: %d records in %.3fs (epoch %s%s)",
            self.record_count(),
            self.last_sync_seconds,
            point.epoch,
            ", flat file" if self.cold is not None else "",
        )
        self.lifecycle.full_sync()

    async def _flat_sync(self, point: SyncPoint) -> str | None:
        """Flat mode's full sync; returns the log position to tail from, or None: fall back to
        a sync into memory (a reader that saw no file of the epoch in time). A reader resumes
        from the writer file's position, so nothing between it and ``point`` is skipped."""
        assert self.snapshot_path is not None
        if not self.flat_writer:
            flat = await self._wait_for_file(point.epoch)
            if flat is None:
                log.warning(
                    "no flat table of epoch %s from the writer within %.0fs; syncing into memory",
                    point.epoch,
                    self.flat_wait,
                )
                return None
            self._adopt(flat, reset=True)
            return flat.last_id if flat.last_id is not None else ZERO_ID
        async with self._file_lock:
            builder = FlatBuilder(self.snapshot_path)
            batches = aiter(self.store.scan_raw(self.scan_batch))
            # The next batch is on its way from the store while a thread checks and writes
            # this one (records are never decoded here: checked for their host and version,
            # decoded strictly when a worker first serves the host).
            ahead: asyncio.Future[list[tuple[bytes, bytes]]] | None = None
            try:
                ahead = asyncio.ensure_future(anext(batches))
                while True:
                    try:
                        items = await ahead
                    except StopAsyncIteration:
                        ahead = None
                        break
                    ahead = asyncio.ensure_future(anext(batches))
                    for host, exc in await asyncio.to_thread(builder.add_checked, items):
                        self.invalid += 1
                        name = host.decode("utf-8", "replace")
                        log.error("ignoring invalid route record for %s: %s", name, exc)
                await asyncio.to_thread(builder.finish, point.epoch, point.last_id)
            finally:
                if ahead is not None:
                    ahead.cancel()
                    with contextlib.suppress(BaseException):
                        await ahead  # (also retrieves its error, if it had one)
                with contextlib.suppress(Exception):
                    await batches.aclose()  # type: ignore[attr-defined]
                builder.abort()
            # The file just written is trusted with the checksum computed while writing it
            # (re-reading it would cost a second or so at a million records).
            flat = await asyncio.to_thread(FlatFile, self.snapshot_path, builder.crc_written)
        release_memory()
        self._adopt(flat, reset=True)
        return point.last_id

    async def _wait_for_file(self, epoch: str | None) -> FlatFile | None:
        assert self.snapshot_path is not None
        deadline = self.clock() + self.flat_wait
        looked: tuple[int, int, int] | None = None
        while True:
            # Open (and checksum) a file only when it is not the one looked at last time: the
            # writer's sync runs meanwhile, on the same cores.
            try:
                st = os.stat(self.snapshot_path)
                seen: tuple[int, int, int] | None = (st.st_dev, st.st_ino, st.st_mtime_ns)
            except OSError:
                seen = None
            if seen is not None and seen != looked:
                looked = seen
                flat = await self._open_file(quiet=True)
                if flat is not None and flat.epoch == epoch:
                    return flat
            if self.clock() >= deadline:
                return None
            await asyncio.sleep(0.1)

    async def _open_file(self, quiet: bool = False) -> FlatFile | None:
        assert self.snapshot_path is not None
        try:
            return await asyncio.to_thread(FlatFile, self.snapshot_path)
        except FlatError as exc:
            if not quiet or "cannot open" not in str(exc):
                self.flat_refused += 1
                log.error("refusing flat route table: %s; resyncing from the store", exc)
            return None

    def _adopt(self, flat: FlatFile, *, reset: bool) -> None:
        """Serve ``flat`` from now on. ``reset``: it replaces everything (a full sync or a cold
        start); otherwise it is a newer compaction of the same table: an overlay entry or a
        tombstone stays unless the file holds its version or a newer one, and hot routes the
        file holds unchanged carry over."""
        cold = ColdRoutes(flat, self.registry, self.hot_cache)
        old = self.cold
        if reset:
            routes: dict[bytes, CompiledRoute] = {}
        else:
            routes = {h: r for h, r in self.routes.items() if flat.version(h) < r.version}
            if old is not None:
                cold.deleted = {h: v for h, v in old.deleted.items() if 0 <= flat.version(h) < v}
                for host, route in old.cache.items():
                    if len(cold.cache) >= cold.limit:
                        break
                    if flat.version(host) == route.version:
                        cold.cache[host] = route
                for host in old.absent:
                    if len(cold.absent) >= cold.absent_limit:
                        break
                    if flat.version(host) < 0:
                        cold.absent[host] = None
        # Two assignments, no await between them: a lookup sees the old pair or the new one.
        self.routes = routes
        self.cold = cold

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
                    if entry.epoch != self.epoch or self.state is TableState.LOST:
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
        if not host.isascii():  # never from the admin; a hostile or broken writer of the log
            self.invalid += 1
            log.error("ignoring log entry %s for a non-ASCII host %r", entry.id, host)
            return
        key = host.encode("ascii")
        current = self.routes.get(key)
        cold = self.cold
        held = current.version if current is not None else -1
        if cold is not None and current is None:
            held = cold.deleted.get(key, -1)
            if held < 0:
                held = cold.flat.version(key)
        if held >= 0 and entry.version <= held:
            self.ignored += 1
            return
        if entry.record is None:
            deleted = current is not None
            if current is not None:
                del self.routes[key]
            # A tombstone even for a host only the overlay held: a compaction running now may
            # be writing it into the next file. Swaps keep only the tombstones still needed.
            if cold is not None and (deleted or cold.flat.version(key) >= 0):
                cold.deleted[key] = entry.version
                cold.forget(key)
                deleted = True
            if deleted:
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
            if held >= 0 and route.version <= held:
                self.ignored += 1
                return
        self.routes[route.host_b] = route
        if cold is not None:
            cold.deleted.pop(route.host_b, None)
            cold.forget(route.host_b)
        self.applied += 1
        self.last_version = route.version
        self._dirty = True

    # ------------------------------------------------------------------ snapshot

    def _load_snapshot(self) -> None:
        assert self.snapshot_path is not None
        if self.flat:
            self._load_flat()
            return
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
        if self.freeze_gc:
            gc.collect()
            gc.freeze()
        age = max(0.0, time.time() - snap.written_at)
        self.lifecycle.snapshot_loaded(age)
        log.warning(
            "serving %d routes from snapshot %s (%.0fs old, %d bad lines)",
            len(self.routes),
            self.snapshot_path,
            age,
            snap.bad_lines,
        )

    def _load_flat(self) -> None:
        assert self.snapshot_path is not None
        try:
            flat = FlatFile(self.snapshot_path)
        except FlatError as exc:
            if "cannot open" in str(exc):
                log.info("no flat route table yet: %s", exc)
            else:
                self.flat_refused += 1
                log.error("refusing flat route table: %s; resyncing from the store", exc)
            return
        self._adopt(flat, reset=True)
        self.epoch = flat.epoch
        self.last_id = flat.last_id
        age = max(0.0, time.time() - flat.written_at)
        self.lifecycle.snapshot_loaded(age)
        log.warning(
            "serving %d routes from flat table %s (%.0fs old, %d bytes mapped)",
            flat.count,
            self.snapshot_path,
            age,
            flat.size,
        )

    async def _watch_loop(self) -> None:
        """A flat-mode reader: swap to the writer's newer file of our epoch when one appears."""
        assert self.snapshot_path is not None
        while True:
            await asyncio.sleep(self.check_interval)
            cold = self.cold
            try:
                st = os.stat(self.snapshot_path)
            except OSError:
                continue
            seen = (st.st_dev, st.st_ino, st.st_mtime_ns)
            if cold is not None and cold.flat.inode == seen:
                continue
            if self.epoch is None or not self.synced:
                continue  # a full sync (or the wait for the writer's file) decides
            flat = await self._open_file()
            if flat is None or flat.epoch != self.epoch or self.cold is not cold:
                continue
            self._adopt(flat, reset=False)

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
            self._snap_write = asyncio.ensure_future(self._write_snapshot())
            try:
                await asyncio.shield(self._snap_write)  # stop() waits for it, see there
            except OSError as exc:
                self._dirty = True
                log.error("writing route snapshot %s failed: %s", self.snapshot_path, exc)
            last = self.clock()

    async def _write_snapshot(self) -> None:
        if not self.flat:
            await asyncio.to_thread(self._write_snapshot_now, *self._snapshot_state())
            return
        async with self._file_lock:
            cold = self.cold
            # Captured together on the loop, like the routes of a snapshot (see there).
            overlay = list(self.routes.values())
            deleted = dict(cold.deleted) if cold is not None else {}
            epoch, last_id = self.epoch, self.last_id
            base = cold.flat if cold is not None else None
            flat = await asyncio.to_thread(self._compact, base, overlay, deleted, epoch, last_id)
            if self.cold is cold and self.epoch == epoch:
                self._adopt(flat, reset=False)
                self.compactions += 1

    def _compact(
        self,
        base: FlatFile | None,
        overlay: list[CompiledRoute],
        deleted: dict[bytes, int],
        epoch: str | None,
        last_id: str | None,
    ) -> FlatFile:
        """Runs in a thread: the base file's records minus the tombstones and the overlay's
        hosts, then the overlay, into a new file (renamed over the old one), mapped."""
        assert self.snapshot_path is not None
        started = time.perf_counter()
        builder = FlatBuilder(self.snapshot_path)
        try:
            replaced = {route.host_b for route in overlay}
            if base is not None:
                for host, version, record in base.items():
                    if host not in replaced and host not in deleted:
                        builder.add(host, version, record)
            for route in overlay:
                builder.add(route.host_b, route.version, route.encode())
            builder.finish(epoch, last_id)
        finally:
            builder.abort()
        flat = FlatFile(self.snapshot_path, builder.crc_written)  # trusted: just written
        self._snap_cost = time.perf_counter() - started
        self.snapshots_written += 1
        return flat

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
