"""Upstream connection pool: our own keep-alive HTTP/1.1 client on ``asyncio.Protocol`` +
:func:`gateway.head.parse_response` — the pool and its bookkeeping (idle lists per origin, the
per-origin bound and its waiters, the sweep of every deadline). One connection's protocol
(request writing, response parsing and limits, its states) is :mod:`gateway.upstream`.

Theory of operation
-------------------
One :class:`UpstreamPool` per worker, one list of idle connections per origin ``(host, port)``.
Callers hand :meth:`UpstreamPool.acquire` a *sink* (an object implementing :class:`~gateway.upstream.Sink`); the
pool calls ``sink.upstream_ready(conn)`` — synchronously when an idle connection is at hand —
or ``sink.upstream_failed(error)``. The sink then writes the request through the connection,
and the connection calls the sink back with the response: ``response_head``, ``response_body``
(every chunk as it arrives: SSE and long polls are never buffered), ``response_end`` or
``response_aborted``. No task or timer exists per request: connects run as one task per *new
connection*, and every deadline (connect-wait, response head, read idle, pool idle) is checked
by the worker's periodic sweep through :meth:`UpstreamPool.sweep`. There is no separate write
deadline: request body bytes keep the read-idle deadline alive
(:meth:`~gateway.upstream.UpstreamConnection.write_body`), so an upstream that stops reading an
upload stalls it (backpressure) until that deadline passes.

Idle connections are reused LIFO; a connection that ended its exchange cleanly comes back
through ``_release`` (to a waiter first), one that closed or was dropped through ``_forget``,
and a tunnel stops counting against its origin through ``_detach`` — the only three ways
:class:`~gateway.upstream.UpstreamConnection` reaches into the pool.
"""

from __future__ import annotations

import asyncio
import socket
from collections import deque
from typing import TYPE_CHECKING

from gateway.errors import UpstreamError
from gateway.upstream import ConnState, Key, Sink, UpstreamConnection

if TYPE_CHECKING:
    from gateway.config import GatewayConfig
    from routing.upstreams import Replica


class _Waiter:
    __slots__ = ("connect_timeout", "deadline", "replica", "sink")

    def __init__(self, sink: Sink, replica: Replica, connect_timeout: float, deadline: float):
        self.sink = sink
        self.replica = replica
        self.connect_timeout = connect_timeout
        self.deadline = deadline


class UpstreamPool:
    """Per-worker pool of upstream connections, bounded per origin."""

    def __init__(self, config: GatewayConfig, loop: asyncio.AbstractEventLoop | None = None):
        self.loop = loop or asyncio.get_event_loop()
        self.max_per_origin = config.pool_max_per_origin
        self.wait_timeout = config.pool_wait_timeout
        self.idle_timeout = config.pool_idle_timeout
        self.high_water = config.high_water
        self.max_head_bytes = config.max_response_header_bytes
        self.max_headers = config.max_response_headers
        self.head_timeout = config.response_header_timeout
        self.now = self.loop.time
        self._idle: dict[Key, list[UpstreamConnection]] = {}
        self._count: dict[Key, int] = {}
        self._waiters: dict[Key, deque[_Waiter]] = {}
        self._active: set[UpstreamConnection] = set()
        self._connecting: set[asyncio.Task[None]] = set()
        self.closed = False
        # counters
        self.connects = 0
        self.connect_errors = 0
        self.reuses = 0

    # -------------------------------------------------------------- acquiring

    def acquire(self, replica: Replica, sink: Sink, connect_timeout: float) -> None:
        """Get a connection to ``replica`` for ``sink``: ``upstream_ready`` or ``upstream_failed``
        is called, possibly before this returns."""
        if self.closed:
            sink.upstream_failed(UpstreamError("pool", "gateway is shutting down"))
            return
        key = replica.key
        idle = self._idle.get(key)
        while idle:
            conn = idle.pop()  # LIFO: the most recently used socket is the least likely stale
            transport = conn.transport
            if (
                conn.state is ConnState.IDLE
                and transport is not None
                and not transport.is_closing()
            ):
                conn.state = ConnState.ACTIVE
                self._active.add(conn)
                self.reuses += 1
                sink.upstream_ready(conn)
                return
            conn._drop()
        if self._count.get(key, 0) < self.max_per_origin:
            self._open(key, replica, sink, connect_timeout)
            return
        queue = self._waiters.get(key)
        if queue is None:
            queue = self._waiters[key] = deque()
        queue.append(_Waiter(sink, replica, connect_timeout, self.now() + self.wait_timeout))

    def connect_fresh(self, replica: Replica, sink: Sink, connect_timeout: float) -> None:
        """A new connection regardless of idle ones (retry after a stale reuse, upgrades)."""
        self._open(replica.key, replica, sink, connect_timeout)

    def _open(self, key: Key, replica: Replica, sink: Sink, timeout: float) -> None:
        self._count[key] = self._count.get(key, 0) + 1
        task = self.loop.create_task(self._connect(key, replica, sink, timeout))
        self._connecting.add(task)
        task.add_done_callback(self._connecting.discard)

    async def _connect(self, key: Key, replica: Replica, sink: Sink, timeout: float) -> None:
        self.connects += 1
        try:
            async with asyncio.timeout(timeout):
                _, proto = await self.loop.create_connection(
                    lambda: UpstreamConnection(self, key), replica.host, replica.port
                )
        except TimeoutError:
            self._count_down(key)
            self.connect_errors += 1
            sink.upstream_failed(
                UpstreamError("timeout", f"connect to {replica.url} timed out after {timeout}s")
            )
            return
        except (OSError, socket.gaierror) as exc:
            self._count_down(key)
            self.connect_errors += 1
            sink.upstream_failed(UpstreamError("connect", f"connect to {replica.url}: {exc}"))
            return
        except asyncio.CancelledError:
            self._count_down(key)
            raise
        conn = proto
        assert isinstance(conn, UpstreamConnection)
        if conn.state is ConnState.CLOSED:  # lost between connect and here
            sink.upstream_failed(UpstreamError("reset", f"{replica.url} closed at once"))
            return
        conn.state = ConnState.ACTIVE
        self._active.add(conn)
        sink.upstream_ready(conn)

    # -------------------------------------------------------------- bookkeeping

    def _count_down(self, key: Key) -> None:
        n = self._count.get(key, 0) - 1
        if n > 0:
            self._count[key] = n
        else:
            self._count.pop(key, None)
        queue = self._waiters.get(key)
        if queue and n < self.max_per_origin:
            waiter = queue.popleft()
            if not queue:
                del self._waiters[key]
            self._open(key, waiter.replica, waiter.sink, waiter.connect_timeout)

    def _release(self, conn: UpstreamConnection) -> None:
        self._active.discard(conn)
        if self.closed:
            conn._drop()
            return
        queue = self._waiters.get(conn.key)
        if queue:
            waiter = queue.popleft()
            if not queue:
                del self._waiters[conn.key]
            conn.state = ConnState.ACTIVE
            self._active.add(conn)
            self.reuses += 1
            waiter.sink.upstream_ready(conn)
            return
        idle = self._idle.get(conn.key)
        if idle is None:
            idle = self._idle[conn.key] = []
        idle.append(conn)

    def _detach(self, conn: UpstreamConnection) -> None:
        """A tunnel no longer counts against the origin's pool."""
        self._active.discard(conn)
        self._count_down(conn.key)

    def _forget(self, conn: UpstreamConnection, state: ConnState) -> None:
        if state is ConnState.CLOSED or state is ConnState.TUNNEL:
            self._active.discard(conn)
            return
        self._active.discard(conn)
        if state is ConnState.IDLE:
            idle = self._idle.get(conn.key)
            if idle is not None and conn in idle:
                idle.remove(conn)
        self._count_down(conn.key)

    # -------------------------------------------------------------- sweep and stats

    def sweep(self, now: float) -> None:
        """Called by the worker's periodic sweep: read-idle timeouts, waiter deadlines, idle
        expiry. Decide first, then act, so callbacks cannot disturb the iteration."""
        expired = [
            c
            for c in self._active
            if c.state is ConnState.ACTIVE and (c.deadline <= now or 0.0 < c.head_deadline <= now)
        ]
        for conn in expired:
            sink = conn.sink
            sent_any = conn.responded
            late_head = conn.deadline > now
            conn.abort()
            if sink is not None:
                what = "response head did not arrive in time" if late_head else "read timed out"
                err = UpstreamError("timeout", f"upstream {what}", sent=True)
                if sent_any:
                    sink.response_aborted(err)
                else:
                    sink.upstream_failed(err)
        for key, queue in list(self._waiters.items()):
            while queue and queue[0].deadline <= now:
                waiter = queue.popleft()
                waiter.sink.upstream_failed(
                    UpstreamError("pool", f"no free connection to {key[0]}:{key[1]} in time")
                )
            if not queue:
                self._waiters.pop(key, None)
        limit = now - self.idle_timeout
        for key, idle in list(self._idle.items()):
            stale = [c for c in idle if c.idle_since <= limit]
            for conn in stale:
                conn._drop()
            if not self._idle.get(key):
                self._idle.pop(key, None)

    def stats(self) -> dict[str, int]:
        return {
            "origins": len(self._count),
            "connections": sum(self._count.values()),
            "idle": sum(len(v) for v in self._idle.values()),
            "active": len(self._active),
            "waiting": sum(len(q) for q in self._waiters.values()),
            "connects": self.connects,
            "connect_errors": self.connect_errors,
            "reuses": self.reuses,
        }

    async def close(self) -> None:
        self.closed = True
        for task in list(self._connecting):
            task.cancel()
        for idle in list(self._idle.values()):
            for conn in list(idle):
                conn._drop()
        self._idle.clear()
        for queue in self._waiters.values():
            for waiter in queue:
                waiter.sink.upstream_failed(UpstreamError("pool", "gateway is shutting down"))
        self._waiters.clear()

    def __repr__(self) -> str:
        return f"UpstreamPool({self.stats()})"
