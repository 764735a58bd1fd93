"""What every gateway front-end runs on: one :class:`GatewayCore` per worker process.

The core owns the route table (and its store), the upstream pool, the counters and their
flusher, the access log, the outcome recorder (:class:`gateway.forwarding.Outcomes`) and the
internal listener (/healthz, /readyz, /metrics). The front-ends are siblings built on it: the
native HTTP/1.1 server (:class:`gateway.native.NativeServer`, run by
:class:`gateway.worker.GatewayWorker`) and the ASGI app (:class:`gateway.asgi.GatewayApp`).
Neither reaches into the other.

Start: table first (snapshot, then store), then the pool, so the first request already sees
routes; then the flusher and the internal listener. Stop (after the front-end drained): final
counter flush, then the pool, the listener, the table and the store.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import sys

from gateway.accesslog import AccessLog
from gateway.config import GatewayConfig
from gateway.counters import Counters
from gateway.flusher import CounterFlusher, CounterSink, MemoryCounterSink, RedisCounterSink
from gateway.forwarding import Outcomes
from gateway.internal import InternalServer
from gateway.pool import UpstreamPool
from routing.keys import Keys
from routing.redis_store import RedisRouteStore
from routing.runtime_state import RedisRuntimeState
from routing.store import MemoryRouteStore, RouteStore
from routing.table import RouteTable
from routing.upstreams import UpstreamRegistry

log = logging.getLogger("turnout.gateway")


def make_store(config: GatewayConfig) -> RouteStore:
    if config.redis_url:
        return RedisRouteStore(config.redis_url, prefix=config.redis_prefix)
    return MemoryRouteStore()


def make_counter_sink(config: GatewayConfig, store: RouteStore) -> CounterSink:
    """Counters go where the routes come from: the store's runtime state when it is shared
    (Redis), else an in-process sink."""
    runtime = store.runtime_state()
    if isinstance(runtime, RedisRuntimeState):
        return RedisCounterSink(runtime, Keys(config.redis_prefix))
    return MemoryCounterSink()


class GatewayCore:
    """One worker's shared state and background machinery, whatever serves the requests."""

    def __init__(
        self,
        config: GatewayConfig,
        *,
        store: RouteStore | None = None,
        counter_sink: CounterSink | None = None,
        index: int = 0,
        table: RouteTable | None = None,
    ) -> None:
        self.config = config
        self.index = index
        self.store = store if store is not None else make_store(config)
        self._owns_store = store is None
        flat = config.route_table == "flat"
        self.table = (
            table
            if table is not None
            else RouteTable(
                self.store,
                registry=UpstreamRegistry(config.ejection),
                # Worker 0 writes the snapshot (in flat mode: builds and compacts the shared
                # file, which the other workers map and watch).
                snapshot_path=config.snapshot_path if index == 0 or flat else None,
                freeze_gc=True,
                flat=flat,
                flat_writer=index == 0,
                hot_cache=config.hot_cache,
            )
        )
        self._snapshot_reader = config.snapshot_path if index != 0 and not flat else None
        self.counters = Counters(config.counters_max_keys)
        self.sink = (
            counter_sink if counter_sink is not None else make_counter_sink(config, self.store)
        )
        self.flusher = CounterFlusher(self.counters, self.sink, interval=config.flush_interval)
        self.access_log = (
            AccessLog(config.access_log_sample, sys.stdout) if config.access_log else None
        )
        self.internal: InternalServer | None = None
        self._pool: UpstreamPool | None = None
        self._outcomes: Outcomes | None = None

    @property
    def pool(self) -> UpstreamPool:
        assert self._pool is not None, "GatewayCore.open() first"
        return self._pool

    @property
    def outcomes(self) -> Outcomes:
        assert self._outcomes is not None, "GatewayCore.open() first"
        return self._outcomes

    def open(self, loop: asyncio.AbstractEventLoop) -> None:
        """The loop-bound parts (pool, outcome clock); :meth:`start` calls it. Alone, for a
        front-end driven without the background machinery (benchmarks, unit tests)."""
        if self._pool is None:
            self._pool = UpstreamPool(self.config, loop)
            self._outcomes = Outcomes(self.counters, self.access_log, loop.time)

    async def start(self, *, wait: float = 5.0) -> None:
        loop = asyncio.get_running_loop()
        # The request path allocates small, acyclic objects freed by reference counting; fewer
        # young-generation collections measured +7 % throughput (benchmarks/RESULTS.md).
        gc.set_threshold(20_000, 50, 1_000)
        if self._snapshot_reader:
            # Only worker 0 writes the snapshot file; the others may still cold-start from it.
            self.table.snapshot_path = self._snapshot_reader
            self.table._load_snapshot()
            self.table.snapshot_path = None
        ready = await self.table.start(wait=wait)
        if not ready:
            log.warning("worker %d: no routes yet (store unreachable, no snapshot)", self.index)
        self.open(loop)
        self.flusher.start()
        if self.config.internal_port:
            self.internal = InternalServer(
                self.table,
                self.counters,
                pool_stats=self.pool.stats,
                flusher=self.flusher,
                host=self.config.internal_host,
                port=self.config.internal_port + self.index,
                worker=self.index,
            )
            await self.internal.start()

    async def stop(self) -> None:
        """After the front-end drained: final counter flush, then close everything."""
        await self.flusher.stop()
        if self._pool is not None:
            await self._pool.close()
        if self.internal is not None:
            await self.internal.stop()
        await self.table.stop()
        if self._owns_store:
            await self.store.close()
