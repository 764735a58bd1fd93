"""Publishing route records: SQL first, then the route store; repairs by republishing.

Theory of operation
-------------------
Every change that affects what a hostname serves inserts the hostname into ``publish_queue``
in the *same* transaction (a transactional outbox). After commit the API kicks the publisher,
which for each queued host: computes the record from SQL and bumps ``route_versions`` (one
transaction), publishes it (or a tombstone) to the store, and only then removes the queue row.
So a crash or a Redis outage between commit and publish loses nothing: the row stays, and the
next run (retry timer, restart) publishes it. Publishing twice is harmless (versions).

The reconciler notices a store that lost its data (no epoch: Redis restarted empty or was
flushed) and republishes everything with :meth:`Publisher.resync`, which replaces the store's
whole table atomically under a new epoch. It also notices a store answering from another server
than the one its data was written on (a Sentinel failover promoted a replica, or Redis restarted
from its disk files): writes the old server acknowledged may be missing there, so
:meth:`Publisher.repair` compares every host's version in SQL with the store's and republishes
the ones behind — no new epoch, so gateways receive only those records.

With several admin instances, the leader lease (``{turnout}:leader:publisher``,
:mod:`admin.leader`) lets exactly one instance publish and resync, so a resync can never swap in
records older than a publish another instance made meanwhile. A write committed on another
instance is not left for the holder's retry timer: that instance's :meth:`Publisher.kick` sees
it does not hold the lease and *pokes* the holder with a notification on
``{turnout}:notify:publish``; the holder's publisher is subscribed (one long-lived reader that
reconnects and resubscribes) and drains at once. A poke lost in an outage costs one retry
period (``publish_retry_seconds``); a new holder drains as soon as it takes the lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from admin.db import hostnames, publish_queue, route_versions
from admin.leader import Lease, LeaseLost
from admin.routes import compute_record
from routing.errors import StaleVersionError, StoreError
from routing.models import RouteRecord
from routing.runtime_state import Subscription, runtime_for
from routing.store import RouteStore

log = logging.getLogger("turnout.admin.publisher")


class LeaseHeld(RuntimeError):
    """Another admin instance is the one publishing (see :meth:`Publisher._leader`)."""


async def _next_version(conn: AsyncConnection, host: str, at_least: int = 0) -> int:
    row = (
        await conn.execute(sa.select(route_versions.c.version).where(route_versions.c.host == host))
    ).first()
    version = max((row.version if row else 0) + 1, at_least)
    if row is None:
        await conn.execute(sa.insert(route_versions).values(host=host, version=version))
    else:
        await conn.execute(
            sa.update(route_versions).where(route_versions.c.host == host).values(version=version)
        )
    return version


class Publisher:
    def __init__(
        self,
        engine: AsyncEngine,
        store: RouteStore,
        lease: Lease | None = None,
        *,
        retry_seconds: float = 1.0,
        reconcile_seconds: float = 5.0,
    ) -> None:
        self.engine = engine
        self.store = store
        # Without a lease of the caller's: one over the store's own Redis (or, in-process, one
        # this instance always holds), owned (and released) by this publisher.
        self._owns_lease = lease is None
        self.lease = lease or Lease(runtime_for(store))
        self.runtime = self.lease.runtime
        self.poke_channel = self.runtime.keys.notify("publish")
        self.retry_seconds = retry_seconds
        self.reconcile_seconds = reconcile_seconds
        self._kick = asyncio.Event()
        self._recheck = asyncio.Event()  # reconcile now (this instance just took the lease)
        self._local = False  # a commit on this instance since the last drain-loop pass
        self._tasks: list[asyncio.Task[None]] = []
        self._sub: Subscription | None = None
        self._lock = asyncio.Lock()
        self.published = 0
        self.failures = 0
        self.resyncs = 0
        self.repairs = 0  # hosts republished because the store had fallen behind SQL
        self.pokes_sent = 0
        self.pokes_received = 0
        self.last_error: str | None = None
        self.lease.on_change(self._lease_changed)

    def kick(self) -> None:
        """Something was committed to the outbox here: publish it (or poke the holder)."""
        self._local = True
        self._kick.set()

    def _lease_changed(self, leading: bool) -> None:
        if leading:
            self._kick.set()  # rows other instances left for the previous holder
            self._recheck.set()  # and the store's state, which nobody watched meanwhile

    def _poked(self, message: bytes | None) -> None:
        if message is not None:
            self.pokes_received += 1
        # None: (re)subscribed, pokes may have been missed; the holder looks for itself.
        if self.lease.holding:
            self._kick.set()

    def start(self) -> None:
        self.lease.start()
        self._sub = self.runtime.subscribe(self.poke_channel, self._poked)
        self._tasks = [
            asyncio.create_task(self._drain_loop(), name="publisher"),
            asyncio.create_task(self._reconcile_loop(), name="reconciler"),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        sub, self._sub = self._sub, None
        if sub is not None:
            await sub.close()
        if self._owns_lease:
            await self.lease.release()

    async def _drain_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._kick.wait(), self.retry_seconds)
            self._kick.clear()
            local, self._local = self._local, False
            try:
                if not await self._leader():
                    if local:
                        await self._poke()
                    continue
                await self.lease.run_fenced(self.drain)
            except LeaseLost:
                continue  # the successor publishes what is left
            except Exception as exc:
                self.failures += 1
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("publishing failed, will retry: %s", self.last_error)

    async def _poke(self) -> None:
        """Tell the lease holder that the outbox has rows (best effort: its retry timer and a
        new holder's first drain cover a lost poke)."""
        try:
            await self.runtime.notify(self.poke_channel)
        except StoreError as exc:
            log.info("could not poke the publisher lease holder (%s); it will retry", exc)
            return
        self.pokes_sent += 1

    async def _reconcile_loop(self) -> None:
        while True:
            try:
                await self.reconcile()
            except LeaseLost:
                pass
            except Exception as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("reconciling the route store failed: %s", self.last_error)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._recheck.wait(), self.reconcile_seconds)
            self._recheck.clear()

    async def reconcile(self) -> bool:
        """Republish everything when the store has no epoch, or what it lacks when it answers
        from another server than it was written on (see the module docstring). Returns True
        when it republished something."""
        ident = await self.store.identity()
        if ident.epoch is None:
            if not await self._leader():
                return False
            log.warning(
                "route store has no epoch (first start, or it lost its data); publishing everything"
            )
            await self.lease.run_fenced(self.resync)
            return True
        if not ident.moved or not await self._leader():
            return False
        log.warning(
            "route store answers from another server than its data was written on (failover or "
            "restart from disk); republishing what it lacks"
        )
        repaired = await self.lease.run_fenced(self.repair)
        assert ident.server is not None  # moved implies a known server
        await self.store.set_origin(ident.server)
        return repaired > 0

    async def repair(self) -> int:
        """Republish every host whose version in the store is older than SQL's (or missing),
        and tombstone hosts the store has but SQL never versioned. Returns how many."""
        async with self._lock:
            stored = await self.store.versions()
            async with self.engine.connect() as conn:
                known = {
                    r.host: int(r.version)
                    for r in (
                        await conn.execute(
                            sa.select(route_versions.c.host, route_versions.c.version)
                        )
                    ).all()
                }
            behind = sorted(h for h, v in known.items() if stored.get(h, 0) < v)
            behind += sorted(set(stored) - set(known))
            for host in behind:
                await self._publish_one(host, None)
            self.repairs += len(behind)
            if behind:
                log.warning("republished %d records the route store had lost", len(behind))
            return len(behind)

    async def _leader(self) -> bool:
        """Hold (or take) the leader lease: with several admins, exactly one publishes.

        Publishing and full resyncs must not interleave across instances (a resync swaps in
        records computed earlier and would undo another instance's newer publish), so both
        run only on the lease holder; other instances leave their outbox rows to it (picked up
        within ``retry_seconds``). See :mod:`admin.leader`."""
        return await self.lease.held()

    async def drain(self) -> int:
        """Publish every queued host; returns how many were published (0 when another admin
        instance holds the publisher lease)."""
        if not await self._leader():
            return 0
        async with self._lock:
            async with self.engine.connect() as conn:
                rows = (
                    await conn.execute(
                        sa.select(publish_queue.c.host, publish_queue.c.enqueued_at).order_by(
                            publish_queue.c.enqueued_at
                        )
                    )
                ).all()
            done = 0
            first_error: Exception | None = None
            for row in rows:
                # One host that cannot be published must not hold back every other host.
                try:
                    await self._publish_one(row.host, row.enqueued_at)
                except Exception as exc:
                    self.failures += 1
                    self.last_error = f"{row.host}: {type(exc).__name__}: {exc}"
                    log.warning("publishing %s failed, will retry: %s", row.host, exc)
                    first_error = first_error or exc
                    continue
                done += 1
            if first_error is not None and not done:
                raise first_error  # nothing went out (store down?): the loop backs off
            return done

    async def _publish_one(self, host: str, enqueued_at: int | None, at_least: int = 0) -> None:
        """Compute ``host``'s record from SQL under a new version and publish it; then remove
        its outbox rows up to ``enqueued_at`` (None: leave the outbox alone)."""
        async with self.engine.begin() as conn:
            version = await _next_version(conn, host, at_least)
            record = await compute_record(conn, host, version)
        try:
            if record is None:
                await self.store.delete(host, version)
            else:
                await self.store.publish(record)
        except StaleVersionError as exc:
            # The store holds a newer version than SQL remembers (SQL restored from a backup?):
            # jump past it; the record content still comes from SQL.
            await self._publish_one(host, enqueued_at, exc.current + 1)
            return
        if enqueued_at is None:
            self.published += 1
            return
        async with self.engine.begin() as conn:
            await conn.execute(
                sa.delete(publish_queue).where(
                    publish_queue.c.host == host, publish_queue.c.enqueued_at <= enqueued_at
                )
            )
        self.published += 1

    async def resync(self, *, force: bool = False) -> dict[str, Any]:
        """Full republish from SQL under a new epoch; reports counts. Raises
        :class:`LeaseHeld` when another admin instance holds the publisher lease, unless
        ``force`` (the operator's ``turnout admin resync``: an explicit repair)."""
        if not force and not await self._leader():
            raise LeaseHeld("another admin instance holds the publisher lease; it publishes")
        started = time.perf_counter()
        async with self._lock:
            records: list[RouteRecord] = []
            withdrawn = 0
            async with self.engine.begin() as conn:
                # Queue rows seen in this snapshot are covered by it; later ones are not.
                queued = (
                    await conn.execute(sa.select(publish_queue.c.host, publish_queue.c.enqueued_at))
                ).all()
                hosts = [
                    r.host
                    for r in (
                        await conn.execute(
                            # several spaces may claim one name (admin/claims.py): once each
                            sa.select(hostnames.c.host).distinct().order_by(hostnames.c.host)
                        )
                    ).all()
                ]
                for host in hosts:
                    version = await _next_version(conn, host)
                    record = await compute_record(conn, host, version)
                    if record is None:
                        withdrawn += 1
                    else:
                        records.append(record)
            if not force and not self.lease.holding:
                raise LeaseHeld("the publisher lease ended before the resync could be written")
            epoch = await self.store.replace_all(records)
            async with self.engine.begin() as conn:
                for q in queued:
                    await conn.execute(
                        sa.delete(publish_queue).where(
                            publish_queue.c.host == q.host,
                            publish_queue.c.enqueued_at <= q.enqueued_at,
                        )
                    )
            self.resyncs += 1
        return {
            "epoch": epoch,
            "published": len(records),
            "withdrawn": withdrawn,
            "hostnames": len(records) + withdrawn,
            "seconds": round(time.perf_counter() - started, 3),
        }
