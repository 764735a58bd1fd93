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
whole table atomically under a new epoch. With several admin instances, the leader lease
(``{turnout}:leader:publisher``, :mod:`admin.leader`) lets exactly one instance publish and
resync, so a resync can never swap in records older than a publish another instance made
meanwhile.
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
from admin.leader import Lease
from admin.routes import compute_record
from routing.errors import StaleVersionError
from routing.models import RouteRecord
from routing.runtime_state import runtime_for
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
        # this instance always holds).
        self.lease = lease or Lease(runtime_for(store))
        self.retry_seconds = retry_seconds
        self.reconcile_seconds = reconcile_seconds
        self._kick = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._lock = asyncio.Lock()
        self.published = 0
        self.failures = 0
        self.resyncs = 0
        self.last_error: str | None = None

    def kick(self) -> None:
        self._kick.set()

    def start(self) -> None:
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

    async def _drain_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._kick.wait(), self.retry_seconds)
            self._kick.clear()
            try:
                await self.drain()
            except Exception as exc:
                self.failures += 1
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("publishing failed, will retry: %s", self.last_error)

    async def _reconcile_loop(self) -> None:
        while True:
            try:
                await self.reconcile()
            except Exception as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("reconciling the route store failed: %s", self.last_error)
            await asyncio.sleep(self.reconcile_seconds)

    async def reconcile(self) -> bool:
        """Republish everything when the store has no epoch. Returns True when it did."""
        if await self.store.get_epoch() is not None:
            return False
        if not await self._leader():
            return False
        log.warning(
            "route store has no epoch (first start, or it lost its data); publishing everything"
        )
        await self.resync()
        return True

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

    async def _publish_one(self, host: str, enqueued_at: int, at_least: int = 0) -> None:
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
