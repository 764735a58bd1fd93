"""The gateway as an ASGI 3 application: scopes, lifespan, the core, worker slots.

Configuration is read once, at lifespan startup, from the ``TURNOUT_*`` variables
(:func:`gateway.config.config_from_env`, the same settings and parsers as the flags), so the
module-level :data:`gateway.asgi.app` works under any server; ``GatewayApp(config=...,
store=...)`` embeds it. Worker index: ``TURNOUT_WORKER_INDEX`` when set; under
:func:`gateway.launcher.run_asgi_server` with several workers (uvicorn and granian do not tell a
worker its number) each worker claims the first free slot among ``TURNOUT_WORKERS`` lock files
in ``TURNOUT_WORKER_SLOTS``, so worker N gets internal port ``port + N`` and only worker 0
writes the route snapshot; a worker that finds no free slot runs without the internal listener.
Without lifespan events the app starts itself on the first request (and then is never stopped:
no final counter flush).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import logging
import os
from typing import TYPE_CHECKING

from gateway import wsframes
from gateway.asgi.http import HttpExchange
from gateway.asgi.messages import (
    Message,
    Receive,
    Scope,
    Send,
    frame_unframed,
    request_target,
    send_answer,
    ws_reject_answer,
)
from gateway.asgi.websocket import WS_REQUEST_DROP, WsProxy
from gateway.config import GatewayConfig, config_from_env
from gateway.dispatch import Dispatcher, Plan
from gateway.errors import (
    Answer,
)
from gateway.forwarding import Outcomes

if TYPE_CHECKING:
    from gateway.core import GatewayCore
    from gateway.counters import Counters
    from gateway.flusher import CounterSink
    from gateway.pool import UpstreamPool
    from routing.store import RouteStore


log = logging.getLogger("turnout.gateway.asgi")


def _claim_slot(directory: str, slots: int) -> tuple[int, int] | None:
    """The first of ``slots`` lock files in ``directory`` this process can lock: (index, fd).

    The lock lives as long as the process (the fd stays open), so a restarted worker takes over
    the number of the one that died."""
    import fcntl

    for index in range(slots):
        fd = os.open(os.path.join(directory, f"worker-{index}.lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            continue
        return index, fd
    return None


# =============================================================================== the app


class GatewayApp:
    """The gateway as an ASGI 3 application (``http``, ``websocket`` and ``lifespan`` scopes)."""

    def __init__(
        self,
        config: GatewayConfig | None = None,
        *,
        store: RouteStore | None = None,
        counter_sink: CounterSink | None = None,
        index: int | None = None,
    ) -> None:
        self._config = config
        self._store = store
        self._counter_sink = counter_sink
        self._index = index
        self._slot_fd: int | None = None
        self._start_lock: asyncio.Lock | None = None
        self._sweep_handle: asyncio.TimerHandle | None = None
        self.started = False
        self.config: GatewayConfig | None = None
        self.core: GatewayCore | None = None
        self.tunnels: set[WsProxy] = set()
        # set by startup(); typed as present because requests only run after it
        self.loop: asyncio.AbstractEventLoop
        self.pool: UpstreamPool
        self.counters: Counters
        self.outcomes: Outcomes
        self.dispatcher: Dispatcher
        self.dispatcher_tls: Dispatcher
        self.high_water = 256 * 1024

    # ------------------------------------------------------------------ ASGI entry point

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            if not self.started:
                await self._lazy_start()
            await self._http(scope, receive, send)
        elif kind == "websocket":
            if not self.started:
                await self._lazy_start()
            await self._websocket(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)
        else:
            raise RuntimeError(f"unsupported ASGI scope type {kind!r}")

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            kind = message["type"]
            if kind == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as exc:
                    log.exception("gateway startup failed")
                    await send({"type": "lifespan.startup.failed", "message": repr(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif kind == "lifespan.shutdown":
                try:
                    await self.shutdown()
                except Exception as exc:
                    log.exception("gateway shutdown failed")
                    await send({"type": "lifespan.shutdown.failed", "message": repr(exc)})
                    return
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _lazy_start(self) -> None:
        if self._start_lock is None:
            self._start_lock = asyncio.Lock()
        async with self._start_lock:
            if not self.started:
                log.warning("no lifespan startup: starting on the first request")
                await self.startup()

    # ------------------------------------------------------------------ lifecycle

    async def startup(self) -> None:
        """Build and start the worker (route table, pool, counters, flusher, internal)."""
        if self.started:
            return
        from gateway.core import GatewayCore

        config = self._config if self._config is not None else config_from_env()
        index = self._index
        if index is None:
            index, config = self._worker_index(config)
        core = GatewayCore(config, store=self._store, counter_sink=self._counter_sink, index=index)
        await core.start()
        self.loop = asyncio.get_running_loop()
        self.config = config
        self.core = core
        self.pool = core.pool
        self.counters = core.counters
        self.outcomes = core.outcomes
        self.high_water = config.high_water
        self.dispatcher = Dispatcher(core.table, config, proto=b"http")
        self.dispatcher_tls = Dispatcher(core.table, config, proto=b"https")
        self._sweep_handle = self.loop.call_later(config.sweep_interval, self._sweep)
        self.started = True

    def _worker_index(self, config: GatewayConfig) -> tuple[int, GatewayConfig]:
        raw = os.environ.get("TURNOUT_WORKER_INDEX", "").strip()
        if raw:
            try:
                return int(raw), config
            except ValueError:
                raise ValueError(f"TURNOUT_WORKER_INDEX: invalid value {raw!r}") from None
        slots = os.environ.get("TURNOUT_WORKER_SLOTS", "").strip()
        if not slots or config.workers <= 1:
            return 0, config
        claimed = _claim_slot(slots, config.workers)
        if claimed is None:
            log.warning("no free worker slot: internal listener disabled in this worker")
            return config.workers, dataclasses.replace(config, internal_port=0)
        index, self._slot_fd = claimed
        return index, config

    async def shutdown(self) -> None:
        """Close tunnels, then the worker's own stop: final counter flush, pool, table."""
        if not self.started:
            return
        self.started = False
        if self._sweep_handle is not None:
            self._sweep_handle.cancel()
            self._sweep_handle = None
        for tunnel in list(self.tunnels):
            tunnel.expire(wsframes.CLOSE_GOING_AWAY, "gateway shutting down")
        core, self.core = self.core, None
        if core is not None:
            await core.stop()
        if self._slot_fd is not None:
            os.close(self._slot_fd)
            self._slot_fd = None

    def _sweep(self) -> None:
        now = self.loop.time()
        try:
            self.pool.sweep(now)
            if self.tunnels:
                for tunnel in [t for t in self.tunnels if t.deadline <= now]:
                    tunnel.expire(wsframes.CLOSE_GOING_AWAY, "idle timeout")
        finally:
            assert self.config is not None
            self._sweep_handle = self.loop.call_later(self.config.sweep_interval, self._sweep)

    # ------------------------------------------------------------------ http

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        t0 = self.loop.time()
        method = scope["method"].encode("ascii")
        target = request_target(scope)
        headers: list[tuple[bytes, bytes]] = scope["headers"]
        client = scope.get("client")
        peer = client[0] if client else "unix"
        first: Message | None = None
        if scope.get("http_version", "1.1") not in ("1.1", "1.0"):
            headers, first = await frame_unframed(headers, receive)
        dispatcher = self.dispatcher_tls if scope.get("scheme") == "https" else self.dispatcher
        result = dispatcher.prepare(method, target, None, headers, peer, t0, strict_framing=False)
        if isinstance(result, Plan) and result.upgrade is not None:
            # Only a websocket scope can tunnel; anything else goes up as a plain request.
            headers = [h for h in headers if h[0].lower() != b"upgrade"]
            result = dispatcher.prepare(
                method, target, None, headers, peer, t0, strict_framing=False
            )
        if not isinstance(result, Plan):
            answer, rid = result
            await self._answer_unrouted(send, answer, rid, method, target, peer, t0)
            return
        await HttpExchange(self, result, method, target, peer, t0).run(receive, send, first)

    async def _answer_unrouted(
        self,
        send: Send,
        answer: Answer,
        rid: bytes,
        method: bytes,
        target: bytes,
        peer: str,
        t0: float,
    ) -> None:
        with contextlib.suppress(OSError):
            await send_answer(send, answer, rid, head_only=method == b"HEAD")
        self.outcomes.answered(None, peer, method, target, t0, answer.status, 0, False, rid)

    def finish(
        self,
        plan: Plan,
        method: bytes,
        url: bytes,
        peer: str,
        t0: float,
        status: int,
        nbytes: int,
        timed_out: bool,
    ) -> None:
        """A routed request is answered: count it (as native ``ClientConnection.finish``)."""
        self.outcomes.answered(plan, peer, method, url, t0, status, nbytes, timed_out, b"")

    # ------------------------------------------------------------------ websocket

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        message = await receive()
        if message["type"] != "websocket.connect":
            return
        t0 = self.loop.time()
        target = request_target(scope)
        client = scope.get("client")
        peer = client[0] if client else "unix"
        key = base64.b64encode(os.urandom(16))
        headers = [(n, v) for n, v in scope["headers"] if n.lower() not in WS_REQUEST_DROP]
        headers += [
            (b"connection", b"upgrade"),
            (b"upgrade", b"websocket"),
            (b"sec-websocket-key", key),
            (b"sec-websocket-version", b"13"),
        ]
        subprotocols: list[str] = list(scope.get("subprotocols") or ())
        if subprotocols:
            headers.append((b"sec-websocket-protocol", ", ".join(subprotocols).encode("latin-1")))
        dispatcher = self.dispatcher_tls if scope.get("scheme") == "wss" else self.dispatcher
        result = dispatcher.prepare(b"GET", target, None, headers, peer, t0, strict_framing=False)
        if not isinstance(result, Plan):
            answer, rid = result
            await ws_reject_answer(scope, send, answer, rid)
            self.counters.answered(answer.status)
            return
        proxy = WsProxy(self, result, key, subprotocols, target, peer, t0)
        await proxy.run(scope, receive, send)
