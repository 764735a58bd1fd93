"""One gateway worker: route table, upstream pool, counters and flusher, the front-end server
and the internal listener, started and stopped in the right order.

Start: table first (snapshot, then store), then the pool and the listener, so the first request
already sees routes. Stop (SIGTERM): stop accepting, let in-flight requests finish to the drain
deadline, final counter flush, then close the pool, the table and the store.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import socket
import sys

from gateway.accesslog import AccessLog
from gateway.config import GatewayConfig
from gateway.counters import Counters
from gateway.flusher import CounterFlusher, CounterSink, MemoryCounterSink, RedisCounterSink
from gateway.internal import InternalServer
from gateway.native import NativeServer
from gateway.pool import UpstreamPool
from routing.keys import Keys
from routing.redis_store import RedisRouteStore
from routing.store import MemoryRouteStore, RouteStore
from routing.table import RouteTable
from routing.upstreams import UpstreamRegistry

log = logging.getLogger("turnout.gateway")


def make_store(config: GatewayConfig) -> RouteStore:
    if config.redis_url:
        return RedisRouteStore(config.redis_url, prefix=config.redis_prefix)
    return MemoryRouteStore()


def make_counter_sink(config: GatewayConfig, store: RouteStore) -> CounterSink:
    if isinstance(store, RedisRouteStore):
        return RedisCounterSink(store.redis, Keys(config.redis_prefix))
    return MemoryCounterSink()


class GatewayWorker:
    """Everything one worker process (or the embedded dev gateway) runs."""

    def __init__(
        self,
        config: GatewayConfig,
        *,
        store: RouteStore | None = None,
        counter_sink: CounterSink | None = None,
        index: int = 0,
    ) -> None:
        self.config = config
        self.index = index
        self.store = store if store is not None else make_store(config)
        self._owns_store = store is None
        flat = config.route_table == "flat"
        self.table = RouteTable(
            self.store,
            registry=UpstreamRegistry(config.ejection),
            # Worker 0 writes the snapshot (in flat mode: builds and compacts the shared file,
            # which the other workers map and watch).
            snapshot_path=config.snapshot_path if index == 0 or flat else None,
            freeze_gc=True,
            flat=flat,
            flat_writer=index == 0,
            hot_cache=config.hot_cache,
        )
        self._snapshot_reader = config.snapshot_path if index != 0 and not flat else None
        self.counters = Counters(config.counters_max_keys)
        self.sink = (
            counter_sink if counter_sink is not None else make_counter_sink(config, self.store)
        )
        self.flusher = CounterFlusher(self.counters, self.sink, interval=config.flush_interval)
        self.pool: UpstreamPool | None = None
        self.server: NativeServer | None = None
        self.internal: InternalServer | None = None

    async def start(self, socks: list[socket.socket] | None = None, *, wait: float = 5.0) -> None:
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
        self.pool = UpstreamPool(self.config, loop)
        access = (
            AccessLog(self.config.access_log_sample, sys.stdout) if self.config.access_log else None
        )
        self.server = NativeServer(
            self.config, self.table, self.pool, self.counters, access_log=access, loop=loop
        )
        for sock in socks or ():
            await self.server.listen(sock)
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
        if self.server is not None:
            await self.server.drain(self.config.drain_timeout)
        await self.flusher.stop()
        if self.pool is not None:
            await self.pool.close()
        if self.internal is not None:
            await self.internal.stop()
        await self.table.stop()
        if self._owns_store:
            await self.store.close()


def bind_socket(host: str, port: int, *, reuse_port: bool) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.setblocking(False)
    return sock
