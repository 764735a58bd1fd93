"""The ASGI front-end: the same dispatch core and upstream pool, as a plain ASGI 3 application.

For people who run the gateway under uvicorn, granian or hypercorn (HTTP/2, TLS, embedding)::

    uvicorn gateway.asgi:app --loop uvloop --http httptools \\
        --no-proxy-headers --no-server-header --no-date-header
    granian --interface asgi --loop uvloop gateway.asgi:app

or ``turnout gateway --server uvicorn|granian`` (:func:`run_asgi_server`), which passes those
settings itself. ``--no-proxy-headers`` matters: the gateway decides which peers may set
``X-Forwarded-For`` (``TURNOUT_TRUSTED_PROXIES``); uvicorn's own rewriting of the client address
would bypass that. The server and date headers would duplicate the upstream's.

Theory of operation
-------------------
No Starlette, no per-request dicts beyond the ASGI messages themselves. One
:class:`_HttpExchange` per request is the upstream pool's *sink* (see :mod:`gateway.pool`, and
:class:`gateway.native.Exchange`, whose rules it follows): the pool calls it back, it records
what happened and wakes the request's coroutine through one reusable future, never a queue.

* The request coroutine waits for the response head (or for the gateway's own answer), sends
  ``http.response.start``, then streams ``http.response.body`` messages with ``more_body`` as
  chunks arrive, coalescing what piled up while the previous ``send`` was awaited. Chunks wait
  in a deque; above the high-water mark the upstream socket stops being read until the client
  drains them (backpressure towards the upstream).
* One helper task per request reads ``receive()``: the request body, counted against
  ``policy.max_body_bytes`` (413 while no response byte has gone out), chunk-encoded upstream
  when the plan says so, held back while the upstream connection's write buffer is full or no
  connection is ready yet (backpressure towards the client); then it waits for
  ``http.disconnect``, which aborts the upstream connection (never returned to the pool).
* Retries follow :meth:`gateway.native.Exchange.upstream_failed`: a connect failure moves to
  another replica within ``plan.retryable``; a reused connection that died before answering is
  retried once on a fresh one; replica failures and successes feed passive ejection.
* Deadlines (upstream read idle, pool waits, WebSocket idle) are checked by one periodic sweep
  per app, as in the native server.

Framing: the ASGI server has already decoded the request framing, so the dispatcher runs with
``strict_framing=False``. A request that carried both ``Content-Length`` and
``Transfer-Encoding`` (the server went by ``Transfer-Encoding``, RFC 9112 §6.3) is forwarded
re-framed as chunked, and its response carries ``Connection: close`` so the client connection
ends after it. ASGI has no portable way to force that: uvicorn honours the header (it closes the
connection), other servers may only pass it on. HTTP/2 and HTTP/3 requests carry neither header
when the length is unknown; the first body message decides (one whole body: ``Content-Length``;
more to come: chunked). An ``Upgrade`` other than WebSocket cannot be tunnelled in an ``http``
scope and is forwarded as an ordinary request.

WebSocket: the ``websocket`` scope is proxied. The gateway connects fresh to the chosen replica
(its own connection, outside the pool: a tunnel never returns to it), sends an HTTP/1.1 upgrade
with its own ``Sec-WebSocket-Key`` (subprotocols forwarded, extensions not), and only after the
upstream's ``101`` accepts the client. Messages are pumped both ways with the frame codec in
:mod:`gateway.wsframes` (the gateway is the upstream's client: its frames are masked; pings from
the upstream are answered by the gateway). A refusal is passed on as an HTTP response when the
server supports the ``websocket.http.response`` extension, else as a close with code 1011. The
tunnel closes after ``policy.read_timeout_ms`` without a message either way.

Configuration comes from the environment at lifespan startup (:func:`config_from_env`), so the
module-level :data:`app` works under any server; ``GatewayApp(config=..., store=...)`` embeds it.
Worker index: ``TURNOUT_WORKER_INDEX`` when set; under :func:`run_asgi_server` with several
workers (uvicorn and granian do not tell a worker its number) each worker claims the first free
slot among ``TURNOUT_WORKERS`` lock files in ``TURNOUT_WORKER_SLOTS``, so worker N gets internal
port ``port + N`` and only worker 0 writes the route snapshot; a worker that finds no free slot
runs without the internal listener. Without lifespan events the app starts itself on the first
request (and then is never stopped: no final counter flush).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import hashlib
import logging
import math
import os
import shutil
import tempfile
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import TYPE_CHECKING, Any, Final, cast
from urllib.parse import quote

import httptools

from gateway import wsframes
from gateway.config import GatewayConfig, parse_networks
from gateway.dispatch import DROP_RESPONSE, R_FORWARD, Dispatcher, Plan, response_header_class
from gateway.errors import (
    BAD_GATEWAY,
    BAD_GATEWAY_RESPONSE,
    GATEWAY_TIMEOUT,
    PAYLOAD_TOO_LARGE,
    UPSTREAM_HEADER_TOO_LARGE,
    Answer,
    UpstreamError,
    UpstreamErrorKind,
)
from gateway.forwarding import Outcomes, Retry, after_abort, after_failure, answer_bytes
from gateway.pool import Sink
from routing.upstreams import EjectionPolicy

if TYPE_CHECKING:
    from gateway.accesslog import AccessLog
    from gateway.counters import Counters
    from gateway.flusher import CounterSink
    from gateway.pool import UpstreamConnection, UpstreamPool
    from gateway.worker import GatewayWorker
    from routing.store import RouteStore

log = logging.getLogger("turnout.gateway.asgi")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_LAST_CHUNK: Final = b"0\r\n\r\n"
_JSON: Final = (b"content-type", b"application/json")
_CLOSE: Final = (b"connection", b"close")
_SAFE_PATH: Final = "/!$&'()*+,;=:@-._~"
_WS_GUID: Final = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
# Client handshake headers the gateway replaces with its own upgrade request.
_WS_REQUEST_DROP: Final = frozenset(
    {
        b"connection",
        b"upgrade",
        b"sec-websocket-key",
        b"sec-websocket-version",
        b"sec-websocket-extensions",
        b"sec-websocket-protocol",
        b"sec-websocket-accept",
        b"content-length",
        b"transfer-encoding",
    }
)
# Upstream 101 headers not passed to the client's accept (the server writes its own).
_WS_ACCEPT_DROP: Final = DROP_RESPONSE | {
    b"sec-websocket-accept",
    b"sec-websocket-protocol",
    b"sec-websocket-extensions",
    b"content-length",
    b"date",
    b"server",
}
_WS_REJECT_BODY_MAX: Final = 64 * 1024

_TRUE: Final = frozenset({"1", "true", "yes", "on"})
_FALSE: Final = frozenset({"0", "false", "no", "off", ""})


# =============================================================================== configuration


def _env_bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"{name}: expected 0 or 1, not {raw!r}")


def _env_num(env: Mapping[str, str], name: str, kind: Callable[[str], Any], default: Any) -> Any:
    raw = env.get(name)
    if raw is None or not raw.strip():
        return default
    try:
        return kind(raw.strip())
    except ValueError:
        raise ValueError(f"{name}: invalid value {raw!r}") from None


def _hostport(value: str, name: str) -> tuple[str, int]:
    host, sep, port = value.strip().rpartition(":")
    if not sep:
        host, port = "127.0.0.1", value.strip()
    host = host.strip("[]") or "127.0.0.1"
    try:
        number = int(port)
    except ValueError:
        raise ValueError(f"{name}: invalid port in {value!r}") from None
    if not 0 <= number <= 65535:
        raise ValueError(f"{name}: port out of range in {value!r}")
    return host, number


def config_from_env(environ: Mapping[str, str] | None = None) -> GatewayConfig:
    """The worker configuration from ``TURNOUT_*`` variables (what :func:`export_config` writes).

    ``TURNOUT_REDIS_URL`` (unset: the in-process store, i.e. an empty table),
    ``TURNOUT_REDIS_PREFIX``, ``TURNOUT_SNAPSHOT``, ``TURNOUT_INTERNAL`` (``host:port`` or
    ``off``), ``TURNOUT_TRUSTED_PROXIES`` (comma-separated CIDRs), ``TURNOUT_ACCESS_LOG`` (0/1);
    optional tuning: ``TURNOUT_ACCESS_LOG_SAMPLE``, ``TURNOUT_WORKERS``,
    ``TURNOUT_DRAIN_TIMEOUT``, ``TURNOUT_KEEPALIVE_TIMEOUT``, ``TURNOUT_POOL_MAX_PER_ORIGIN``,
    ``TURNOUT_EJECT_AFTER``, ``TURNOUT_EJECT_SECONDS``, ``TURNOUT_FLUSH_INTERVAL``,
    ``TURNOUT_MAX_RESPONSE_HEADER_BYTES``, ``TURNOUT_MAX_RESPONSE_HEADERS``,
    ``TURNOUT_RESPONSE_HEADER_TIMEOUT``, ``TURNOUT_SERVER`` and ``TURNOUT_LISTEN``
    (informational inside a worker)."""
    env = os.environ if environ is None else environ
    base = GatewayConfig()
    internal = env.get("TURNOUT_INTERNAL", f"{base.internal_host}:{base.internal_port}").strip()
    if internal.lower() in ("off", "", "0"):
        ihost, iport = base.internal_host, 0
    else:
        ihost, iport = _hostport(internal, "TURNOUT_INTERNAL")
    listen = env.get("TURNOUT_LISTEN")
    lhost, lport = (
        _hostport(listen, "TURNOUT_LISTEN") if listen else (base.listen_host, base.listen_port)
    )
    try:
        trusted = parse_networks(env.get("TURNOUT_TRUSTED_PROXIES", "").split(","))
    except ValueError as exc:
        raise ValueError(f"TURNOUT_TRUSTED_PROXIES: {exc}") from None
    default_ejection = base.ejection
    return GatewayConfig(
        listen_host=lhost,
        listen_port=lport,
        workers=_env_num(env, "TURNOUT_WORKERS", int, 1),
        server=env.get("TURNOUT_SERVER", "uvicorn").strip() or "uvicorn",
        redis_url=env.get("TURNOUT_REDIS_URL", "").strip() or None,
        redis_prefix=env.get("TURNOUT_REDIS_PREFIX", "").strip() or base.redis_prefix,
        snapshot_path=env.get("TURNOUT_SNAPSHOT", "").strip() or None,
        internal_host=ihost,
        internal_port=iport,
        keepalive_timeout=_env_num(env, "TURNOUT_KEEPALIVE_TIMEOUT", float, base.keepalive_timeout),
        drain_timeout=_env_num(env, "TURNOUT_DRAIN_TIMEOUT", float, base.drain_timeout),
        pool_max_per_origin=_env_num(
            env, "TURNOUT_POOL_MAX_PER_ORIGIN", int, base.pool_max_per_origin
        ),
        ejection=EjectionPolicy(
            _env_num(env, "TURNOUT_EJECT_AFTER", int, default_ejection.max_fails),
            _env_num(env, "TURNOUT_EJECT_SECONDS", float, default_ejection.eject_seconds),
        ),
        trusted_proxies=trusted,
        flush_interval=_env_num(env, "TURNOUT_FLUSH_INTERVAL", float, base.flush_interval),
        max_response_header_bytes=_env_num(
            env, "TURNOUT_MAX_RESPONSE_HEADER_BYTES", int, base.max_response_header_bytes
        ),
        max_response_headers=_env_num(
            env, "TURNOUT_MAX_RESPONSE_HEADERS", int, base.max_response_headers
        ),
        response_header_timeout=_env_num(
            env, "TURNOUT_RESPONSE_HEADER_TIMEOUT", float, base.response_header_timeout
        ),
        access_log=_env_bool(env, "TURNOUT_ACCESS_LOG", False),
        access_log_sample=_env_num(env, "TURNOUT_ACCESS_LOG_SAMPLE", float, base.access_log_sample),
    )


def export_config(config: GatewayConfig, environ: MutableMapping[str, str] | None = None) -> None:
    """Write ``config`` as the ``TURNOUT_*`` variables :func:`config_from_env` reads back."""
    env: MutableMapping[str, str] = os.environ if environ is None else environ
    values: dict[str, str | None] = {
        "TURNOUT_REDIS_URL": config.redis_url,
        "TURNOUT_REDIS_PREFIX": config.redis_prefix,
        "TURNOUT_SNAPSHOT": config.snapshot_path,
        "TURNOUT_INTERNAL": (
            f"{config.internal_host}:{config.internal_port}" if config.internal_port else "off"
        ),
        "TURNOUT_TRUSTED_PROXIES": ",".join(str(n) for n in config.trusted_proxies),
        "TURNOUT_ACCESS_LOG": "1" if config.access_log else "0",
        "TURNOUT_ACCESS_LOG_SAMPLE": repr(config.access_log_sample),
        "TURNOUT_WORKERS": str(config.workers),
        "TURNOUT_SERVER": config.server,
        "TURNOUT_LISTEN": f"{config.listen_host}:{config.listen_port}",
        "TURNOUT_DRAIN_TIMEOUT": repr(config.drain_timeout),
        "TURNOUT_KEEPALIVE_TIMEOUT": repr(config.keepalive_timeout),
        "TURNOUT_POOL_MAX_PER_ORIGIN": str(config.pool_max_per_origin),
        "TURNOUT_EJECT_AFTER": str(config.ejection.max_fails),
        "TURNOUT_EJECT_SECONDS": repr(config.ejection.eject_seconds),
        "TURNOUT_FLUSH_INTERVAL": repr(config.flush_interval),
        "TURNOUT_MAX_RESPONSE_HEADER_BYTES": str(config.max_response_header_bytes),
        "TURNOUT_MAX_RESPONSE_HEADERS": str(config.max_response_headers),
        "TURNOUT_RESPONSE_HEADER_TIMEOUT": repr(config.response_header_timeout),
    }
    for name, value in values.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value


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
        self.worker: GatewayWorker | None = None
        self.tunnels: set[_WsProxy] = set()
        # set by startup(); typed as present because requests only run after it
        self.loop: asyncio.AbstractEventLoop
        self.pool: UpstreamPool
        self.counters: Counters
        self.access_log: AccessLog | None = None
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
        from gateway.worker import GatewayWorker

        config = self._config if self._config is not None else config_from_env()
        index = self._index
        if index is None:
            index, config = self._worker_index(config)
        worker = GatewayWorker(
            config, store=self._store, counter_sink=self._counter_sink, index=index
        )
        await worker.start(socks=[])
        assert worker.pool is not None and worker.server is not None
        self.loop = asyncio.get_running_loop()
        self.config = config
        self.worker = worker
        self.pool = worker.pool
        self.counters = worker.counters
        self.access_log = worker.server.access_log
        self.outcomes = worker.server.outcomes
        self.high_water = config.high_water
        self.dispatcher = Dispatcher(worker.table, config, proto=b"http")
        self.dispatcher_tls = Dispatcher(worker.table, config, proto=b"https")
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
        worker, self.worker = self.worker, None
        if worker is not None:
            await worker.stop()
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
        target = _target(scope)
        headers: list[tuple[bytes, bytes]] = scope["headers"]
        client = scope.get("client")
        peer = client[0] if client else "unix"
        first: Message | None = None
        if scope.get("http_version", "1.1") not in ("1.1", "1.0"):
            headers, first = await _frame_unframed(headers, receive)
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
        await _HttpExchange(self, result, method, target, peer, t0).run(receive, send, first)

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
        target = _target(scope)
        client = scope.get("client")
        peer = client[0] if client else "unix"
        key = base64.b64encode(os.urandom(16))
        headers = [(n, v) for n, v in scope["headers"] if n.lower() not in _WS_REQUEST_DROP]
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
        proxy = _WsProxy(self, result, key, subprotocols, target, peer, t0)
        await proxy.run(scope, receive, send)


# =============================================================================== helpers


def _target(scope: Scope) -> bytes:
    """Origin-form request target: the raw path (or the quoted path) and the query string."""
    raw = scope.get("raw_path")
    path: bytes = raw if raw else quote(scope["path"], safe=_SAFE_PATH).encode("ascii")
    query: bytes = scope.get("query_string") or b""
    return path + b"?" + query if query else path


async def _frame_unframed(
    headers: list[tuple[bytes, bytes]], receive: Receive
) -> tuple[list[tuple[bytes, bytes]], Message | None]:
    """HTTP/2 and /3 need no length header; upstream HTTP/1.1 does. Peek at the first body
    message: a whole body gets ``Content-Length``, a longer one is sent chunked."""
    for name, _ in headers:
        lname = name.lower()
        if lname == b"content-length" or lname == b"transfer-encoding":
            return headers, None
    first = await receive()
    if first["type"] != "http.request":
        return headers, first
    body: bytes = first.get("body", b"")
    if first.get("more_body", False):
        return [*headers, (b"transfer-encoding", b"chunked")], first
    if body:
        return [*headers, (b"content-length", b"%d" % len(body))], first
    return headers, first


async def send_answer(
    send: Send, answer: Answer, request_id: bytes, *, head_only: bool = False, close: bool = False
) -> int:
    """One of the gateway's own JSON answers; returns the body length."""
    body = answer.body(request_id)
    headers = [_JSON, (b"content-length", b"%d" % len(body)), (b"x-request-id", request_id)]
    if answer.close or close:
        headers.append(_CLOSE)
    await send({"type": "http.response.start", "status": answer.status, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if head_only else body})
    return len(body)


async def ws_reject_answer(scope: Scope, send: Send, answer: Answer, request_id: bytes) -> None:
    """Refuse a WebSocket with one of the gateway's answers."""
    body = answer.body(request_id)
    headers = [_JSON, (b"content-length", b"%d" % len(body)), (b"x-request-id", request_id)]
    await ws_reject(scope, send, answer.status, headers, body)


async def ws_reject(
    scope: Scope, send: Send, status: int, headers: list[tuple[bytes, bytes]], body: bytes
) -> None:
    """Refuse a WebSocket before accepting it: an HTTP response where the server supports the
    ``websocket.http.response`` extension, else a close with code 1011."""
    with contextlib.suppress(OSError):
        if "websocket.http.response" in (scope.get("extensions") or {}):
            await send(
                {"type": "websocket.http.response.start", "status": status, "headers": headers}
            )
            await send({"type": "websocket.http.response.body", "body": body})
        else:
            await send({"type": "websocket.close", "code": wsframes.CLOSE_INTERNAL_ERROR})


# =============================================================================== one request


class _Waiting:
    """One reusable wake-up future for a request's coroutine (shared by HTTP and WebSocket):
    callbacks from the protocol objects call ``_wake``; the coroutine awaits ``_wait``."""

    __slots__ = ("waiter",)
    waiter: asyncio.Future[None] | None
    app: GatewayApp

    async def _wait(self) -> None:
        waiter = self.waiter = self.app.loop.create_future()
        try:
            await waiter
        finally:
            self.waiter = None

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


class _HttpExchange(_Waiting, Sink):
    """One proxied HTTP request: the pool's sink, plus the two coroutines that drive it."""

    __slots__ = (
        "answer",
        "app",
        "body_bytes",
        "body_done",
        "buffered",
        "chunks",
        "conn",
        "ended",
        "error",
        "finished",
        "gone",
        "headers",
        "method",
        "peer",
        "pending",
        "pending_bytes",
        "plan",
        "pump_waiter",
        "read_paused",
        "stale_retry",
        "started",
        "status",
        "t0",
        "timed_out",
        "url",
        "write_paused",
        "written",
    )

    def __init__(
        self, app: GatewayApp, plan: Plan, method: bytes, url: bytes, peer: str, t0: float
    ) -> None:
        self.app = app
        self.plan = plan
        self.method = method
        self.url = url
        self.peer = peer
        self.t0 = t0
        self.conn: UpstreamConnection | None = None
        # request side
        self.pending: list[bytes] | None = None  # body read while no connection was ready
        self.pending_bytes = 0
        self.body_bytes = 0  # request body bytes read from the client
        self.written = 0  # request body bytes written to an upstream connection
        self.body_done = not plan.has_body
        self.write_paused = False
        # response side
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] | None = None
        self.chunks: deque[bytes] = deque()
        self.buffered = 0
        self.read_paused = False
        self.ended = False
        self.error: UpstreamError | None = None  # failed after the response start went out
        self.answer: Answer | None = None  # the gateway answers itself
        self.started = False  # http.response.start sent (or being sent)
        self.timed_out = False
        self.stale_retry = False
        self.gone = False  # the client disconnected
        self.finished = False
        self.waiter = None
        self.pump_waiter: asyncio.Future[None] | None = None

    # ------------------------------------------------------------------ driving coroutines

    async def run(self, receive: Receive, send: Send, first: Message | None) -> None:
        app = self.app
        plan = self.plan
        plan.attempts = 1
        replica = plan.replica
        assert replica is not None
        pump = app.loop.create_task(self._pump(receive, first))
        try:
            app.pool.acquire(replica, self, plan.route.policy.connect_timeout_ms / 1000)
            await self._respond(send)
        except OSError:
            self._client_gone()  # ASGI 2.4: send() on a closed connection raises OSError
        finally:
            self.finished = True
            if not pump.done():
                pump.cancel()
            conn, self.conn = self.conn, None
            if conn is not None:
                conn.abort()  # unfinished response: the socket never goes back to the pool

    async def _respond(self, send: Send) -> None:
        while self.headers is None and self.answer is None and not self.gone:
            await self._wait()
        if self.gone:
            return
        answer = self.answer
        if answer is not None:
            await self._send_answer(send, answer)
            return
        headers = self.headers
        assert headers is not None
        self.started = True
        await send({"type": "http.response.start", "status": self.status, "headers": headers})
        out = 0
        chunks = self.chunks
        while True:
            if chunks:
                data = chunks.popleft() if len(chunks) == 1 else b"".join(chunks)
                chunks.clear()
                self.buffered = 0
                if self.read_paused:
                    self.read_paused = False
                    if self.conn is not None:
                        self.conn.resume_reading()
                out += len(data)
                more = not self.ended
                await send({"type": "http.response.body", "body": data, "more_body": more})
                if not more:
                    break
                continue
            if self.ended:
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                break
            if self.error is not None or self.gone:
                # The upstream failed mid-response: returning without completing makes the
                # server cut the connection, the only way the client can learn of it.
                if self.error is not None:
                    # Counted as a gateway failure for the deployment's health (as native).
                    self.app.outcomes.cut(self.plan, self.t0, self.status, out, self.timed_out)
                return
            await self._wait()
        self.finished = True
        self.app.finish(
            self.plan,
            self.method,
            self.url,
            self.peer,
            self.t0,
            self.status,
            out,
            self.timed_out,
        )

    async def _send_answer(self, send: Send, answer: Answer) -> None:
        self.started = True
        close = self.plan.reframed or not self.body_done
        n = await send_answer(
            send, answer, self.plan.request_id, head_only=self.method == b"HEAD", close=close
        )
        self.finished = True
        self.app.finish(
            self.plan,
            self.method,
            self.url,
            self.peer,
            self.t0,
            answer.status,
            answer_bytes(answer, n),
            self.timed_out,
        )

    def _wake_pump(self) -> None:
        waiter = self.pump_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _pump(self, receive: Receive, first: Message | None) -> None:
        """Request body to the upstream, then wait for the client to go away."""
        message = first
        try:
            while True:
                if message is None:
                    message = await receive()
                kind = message["type"]
                if kind == "http.disconnect":
                    self._client_gone()
                    return
                if kind == "http.request" and not self.body_done:
                    body: bytes = message.get("body", b"")
                    if body and not self._body_chunk(body):
                        return
                    if not message.get("more_body", False):
                        self._body_end()
                    while self._hold_body():
                        waiter = self.pump_waiter = self.app.loop.create_future()
                        try:
                            await waiter
                        finally:
                            self.pump_waiter = None
                message = None
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("reading the request failed")
            self._client_gone()

    def _hold_body(self) -> bool:
        """Should reading the request body wait (backpressure)?"""
        if self.body_done or self.finished or self.gone or self.answer is not None:
            return False
        if self.ended or self.error is not None:
            return False
        if self.conn is None:
            return self.pending_bytes > self.app.high_water
        return self.write_paused

    def _body_chunk(self, data: bytes) -> bool:
        self.body_bytes += len(data)
        plan = self.plan
        if self.body_bytes > plan.route.policy.max_body_bytes:
            self._too_large()
            return False
        if self.answer is not None or self.ended or self.error is not None or self.finished:
            return True  # nobody wants it any more: read and dropped
        conn = self.conn
        if conn is not None:
            conn.write_body(b"%x\r\n%b\r\n" % (len(data), data) if plan.chunked else data)
            self.written += len(data)
        else:
            if self.pending is None:
                self.pending = []
            self.pending.append(data)
            self.pending_bytes += len(data)
        return True

    def _body_end(self) -> None:
        self.body_done = True
        conn = self.conn
        if conn is not None:
            conn.end_request(_LAST_CHUNK if self.plan.chunked else b"")

    def _too_large(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.abort()
        self.body_done = True
        if not self.started:
            self.answer = PAYLOAD_TOO_LARGE
            self.headers = None
            self.chunks.clear()
        else:
            self.error = UpstreamError(UpstreamErrorKind.CLOSED, "request body too large")
        self._wake()

    def _client_gone(self) -> None:
        if self.finished:
            return
        self.gone = True
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.abort()
        self._wake()

    def _can_replay(self) -> bool:
        """Only a request none of whose body reached an upstream can be sent again."""
        return self.written == 0

    # ------------------------------------------------------------------ Sink: pool callbacks

    def upstream_ready(self, conn: UpstreamConnection) -> None:
        if self.finished or self.gone or self.answer is not None:
            conn.abort()
            return
        plan = self.plan
        replica = plan.replica
        assert replica is not None
        if not conn.reused:
            replica.record_success()
        self.conn = conn
        self.write_paused = False
        has_body = plan.has_body
        conn.send(
            self,
            plan.request_head(replica),
            head_only=self.method == b"HEAD",
            read_timeout=plan.route.policy.read_timeout_ms / 1000,
            complete=not has_body,
        )
        pending = self.pending
        if pending is not None:
            self.pending = None
            self.pending_bytes = 0
            for chunk in pending:
                conn.write(b"%x\r\n%b\r\n" % (len(chunk), chunk) if plan.chunked else chunk)
                self.written += len(chunk)
        if self.body_done and has_body and self.conn is conn:
            conn.end_request(_LAST_CHUNK if plan.chunked else b"")
        self._wake_pump()

    def upstream_failed(self, error: UpstreamError) -> None:
        self.conn = None
        if self.finished or self.gone or self.answer is not None:
            return
        app = self.app
        plan = self.plan
        verdict = after_failure(
            plan,
            error,
            now=app.loop.time(),
            counters=app.counters,
            started=self.started,
            replayable=self._can_replay(),
            stale_retried=self.stale_retry,
        )
        if isinstance(verdict, Retry):
            connect_timeout = plan.route.policy.connect_timeout_ms / 1000
            if verdict.fresh:
                self.stale_retry = True
                app.pool.connect_fresh(verdict.replica, self, connect_timeout)
            else:
                app.pool.acquire(verdict.replica, self, connect_timeout)
            return
        if isinstance(verdict, Answer):
            if error.kind is UpstreamErrorKind.TIMEOUT:
                self.timed_out = True
            self.answer = verdict
            self._wake()
            self._wake_pump()
            return
        self.error = error
        self._wake()

    def response_head(
        self,
        status: int,
        reason: bytes,
        headers: list[tuple[bytes, bytes]],
        content_length: bytes | None,
        body_expected: bool,
    ) -> None:
        # Never a 101: the pool refuses one to a request that asked for no upgrade (and an
        # http scope never asks).
        out = [(name.lower(), value) for name, value in headers]
        if content_length is not None and (body_expected or self.method == b"HEAD"):
            out.append((b"content-length", content_length))
        out.append((b"x-request-id", self.plan.request_id))
        if self.plan.reframed:
            out.append(_CLOSE)
        self.status = status
        self.headers = out
        self._wake()

    def response_body(self, data: bytes) -> None:
        self.chunks.append(data)
        self.buffered += len(data)
        if self.buffered > self.app.high_water and not self.read_paused:
            conn = self.conn
            if conn is not None:
                self.read_paused = True
                conn.pause_reading()
        self._wake()

    def response_flush(self) -> None:
        self._wake()  # the end of one read from the upstream (response_body wakes already)

    def response_end(self) -> None:
        # The connection is back in the pool (or closed): never touch it again.
        self.conn = None
        self.read_paused = False
        self.ended = True
        self._wake()
        self._wake_pump()

    def response_aborted(self, error: UpstreamError) -> None:
        self.conn = None
        if error.kind is UpstreamErrorKind.TIMEOUT:
            self.timed_out = True
        verdict = after_abort(error, started=self.started)
        if isinstance(verdict, Answer):
            self.answer = verdict
            self.headers = None
            self.chunks.clear()
        else:
            self.error = error
        self._wake()
        self._wake_pump()

    def upstream_pause_writing(self) -> None:
        self.write_paused = True

    def upstream_resume_writing(self) -> None:
        self.write_paused = False
        self._wake_pump()

    def tunnel_data(self, data: bytes) -> None:  # never upgraded in an http scope
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.abort()

    def __repr__(self) -> str:
        return f"_HttpExchange({self.method!r} {self.url!r}, status={self.status})"


# =============================================================================== websocket


class _WsUpstream(asyncio.Protocol):
    """The gateway's client connection to the upstream of one WebSocket.

    Its handshake response head is bounded as the pool bounds every other response head
    (``max_response_header_bytes``, counted as raw bytes before it is complete, and
    ``max_response_headers``); the handshake deadline is the proxy's (see ``_WsProxy``)."""

    def __init__(self, proxy: _WsProxy, head: bytes, max_size: int) -> None:
        self.proxy = proxy
        self.head = head
        self.transport: asyncio.Transport | None = None
        self.parser: httptools.HttpResponseParser | None = httptools.HttpResponseParser(self)
        self.reader = wsframes.MessageReader(max_size=max_size, masked=False)
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.body = bytearray()
        self.upgraded = False
        self.head_seen = 0  # bytes read before the final handshake head was complete
        self.head_done = False

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.transport.set_write_buffer_limits(high=self.proxy.app.high_water)
        # Bound here, not when create_connection returns: the answer may arrive before that.
        self.proxy.upstream = self
        self.transport.write(self.head)

    def data_received(self, data: bytes) -> None:
        proxy = self.proxy
        if self.head_done:
            proxy.touch()  # the handshake head has a deadline of its own, not extended by bytes
        parser = self.parser
        if parser is not None:
            config = proxy.app.config
            assert config is not None
            if not self.head_done:
                self.head_seen += len(data)
                if self.head_seen > config.max_response_header_bytes:
                    self.parser = None
                    proxy.handshake_failed("upstream handshake head too large", too_large=True)
                    return
            try:
                parser.feed_data(data)
            except httptools.HttpParserUpgrade as exc:
                offset = exc.args[0] if exc.args else len(data)
                self.parser = None
                self.upgraded = True
                proxy.handshake_done()
                data = data[offset:]
                if not data:
                    return
            except httptools.HttpParserError as exc:
                self.parser = None
                too_large = isinstance(exc.__context__ or exc.__cause__, _HandshakeTooLarge)
                proxy.handshake_failed(f"invalid upstream response: {exc}", too_large=too_large)
                return
            else:
                return
        elif not self.upgraded:
            return  # after a refusal: nothing more is read
        try:
            messages = self.reader.feed(data)
        except wsframes.ProtocolError as exc:
            proxy.upstream_protocol_error(exc)
            return
        if messages:
            proxy.upstream_messages(messages)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.proxy.upstream_lost(exc)

    def pause_writing(self) -> None:
        self.proxy.uplink_paused = True

    def resume_writing(self) -> None:
        self.proxy.uplink_paused = False
        self.proxy.wake_uplink()

    # httptools callbacks (handshake response)

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        assert self.parser is not None
        self.status = self.parser.get_status_code()
        config = self.proxy.app.config
        assert config is not None
        if len(self.headers) > config.max_response_headers:
            raise _HandshakeTooLarge  # fails the parse: handshake_failed(too_large=True)
        if not 100 <= self.status < 200 or self.status == 101:
            self.head_done = True

    def on_body(self, body: bytes) -> None:
        if len(self.body) < _WS_REJECT_BODY_MAX:
            self.body += body[: _WS_REJECT_BODY_MAX - len(self.body)]

    def on_message_complete(self) -> None:
        if self.status == 101:
            return  # the parser reports the upgrade itself, next
        if 100 <= self.status < 200:
            self.headers = []  # informational: the real answer follows
            return
        self.parser = None
        self.proxy.handshake_refused()

    # used by the proxy

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


class _HandshakeTooLarge(Exception):
    """Raised from a handshake parser callback: more headers than the limit."""


class _WsProxy(_Waiting):
    """One proxied WebSocket: handshake with the upstream, then messages both ways.

    The request's own coroutine is the only one that sends to the client (the *downlink*);
    one helper task reads the client (the *uplink*)."""

    def __init__(
        self,
        app: GatewayApp,
        plan: Plan,
        key: bytes,
        subprotocols: list[str],
        url: bytes,
        peer: str,
        t0: float,
    ) -> None:
        self.app = app
        self.plan = plan
        self.key = key
        self.subprotocols = subprotocols
        self.url = url
        self.peer = peer
        self.t0 = t0
        policy = plan.route.policy
        self.idle = policy.read_timeout_ms / 1000
        self.max_size = policy.max_body_bytes
        self.deadline = app.loop.time() + self.idle
        self.upstream: _WsUpstream | None = None
        self.state = "handshake"  # handshake -> open | refused | failed; open -> closed
        self.failure: Answer | None = None
        self.inbox: deque[wsframes.Frame] = deque()
        self.inbox_bytes = 0
        self.reading_paused = False
        self.close_code: int | None = None  # set once the tunnel is over, code for the client
        self.close_reason = ""
        self.sent_close = False  # a close frame went to the upstream
        self.client_gone = False
        self.uplink_paused = False
        self.timed_out = False
        self.waiter = None
        self.uplink_waiter: asyncio.Future[None] | None = None

    # ------------------------------------------------------------------ driving

    async def run(self, scope: Scope, receive: Receive, send: Send) -> None:
        app = self.app
        plan = self.plan
        failure = await self._connect()
        if failure is not None:
            await ws_reject_answer(scope, send, failure, plan.request_id)
            app.finish(plan, b"GET", self.url, self.peer, self.t0, failure.status, 0, False)
            return
        upstream = self.upstream
        assert upstream is not None
        app.tunnels.add(self)
        uplink: asyncio.Task[None] | None = None
        try:
            while self.state == "handshake":
                await self._wait()
            if self.state != "open":
                await self._refuse(scope, send, upstream)
                return
            accept = self._check_accept(upstream.headers)
            if accept is None:
                upstream.abort()
                await ws_reject_answer(scope, send, BAD_GATEWAY_RESPONSE, plan.request_id)
                app.finish(plan, b"GET", self.url, self.peer, self.t0, 502, 0, False)
                return
            subprotocol, headers = accept
            await send({"type": "websocket.accept", "subprotocol": subprotocol, "headers": headers})
            app.finish(plan, b"GET", self.url, self.peer, self.t0, 101, 0, False)
            uplink = app.loop.create_task(self._uplink(receive))
            await self._downlink(send)
        except OSError:
            self.client_gone = True
        finally:
            app.tunnels.discard(self)
            if uplink is not None and not uplink.done():
                uplink.cancel()
            if upstream.transport is not None:
                if self.state == "open":
                    self._close_upstream(wsframes.CLOSE_GOING_AWAY)  # a no-op frame if sent
                else:
                    upstream.abort()

    async def _connect(self) -> Answer | None:
        app = self.app
        plan = self.plan
        loop = app.loop
        timeout = plan.route.policy.connect_timeout_ms / 1000
        plan.attempts = 1
        while True:
            replica = plan.replica
            assert replica is not None
            try:
                async with asyncio.timeout(timeout):
                    _, proto = await loop.create_connection(
                        self._factory(plan.request_head(replica)), replica.host, replica.port
                    )
            except TimeoutError:
                error = UpstreamError(UpstreamErrorKind.TIMEOUT, "websocket connect timed out")
            except OSError as exc:
                error = UpstreamError(UpstreamErrorKind.CONNECT, f"websocket connect: {exc}")
            else:
                assert isinstance(proto, _WsUpstream)
                replica.record_success()
                self.upstream = proto
                # The handshake answer is a response head: the pool's head deadline applies.
                assert app.config is not None
                self.deadline = loop.time() + min(self.idle, app.config.response_header_timeout)
                return None
            if self.upstream is not None:  # made, then given up on: not this one
                self.upstream.abort()
                self.upstream = None
            # A tunnel is never retried on a stale connection: it never uses a pooled one.
            verdict = after_failure(
                plan,
                error,
                now=loop.time(),
                counters=app.counters,
                started=False,
                replayable=True,
                stale_retried=True,
            )
            if isinstance(verdict, Answer):
                return verdict

    def _factory(self, head: bytes) -> Callable[[], _WsUpstream]:
        return lambda: _WsUpstream(self, head, self.max_size)

    def _check_accept(
        self, headers: list[tuple[bytes, bytes]]
    ) -> tuple[str | None, list[tuple[bytes, bytes]]] | None:
        """The upstream's 101 must prove it read our key; its subprotocol must be one offered.
        Returns the subprotocol and the headers to accept the client with."""
        expected = base64.b64encode(hashlib.sha1(self.key + _WS_GUID).digest())
        accept: bytes | None = None
        subprotocol: str | None = None
        extensions = False
        out: list[tuple[bytes, bytes]] = []
        for name, value in headers:
            lname = name.lower()
            if lname == b"sec-websocket-accept":
                accept = value.strip()
            elif lname == b"sec-websocket-protocol":
                subprotocol = value.strip().decode("latin-1")
            elif lname == b"sec-websocket-extensions":
                extensions = True
            elif lname not in _WS_ACCEPT_DROP:
                out.append((lname, value))
        if accept != expected or extensions:
            return None
        if subprotocol is not None and subprotocol not in self.subprotocols:
            return None
        out.append((b"x-request-id", self.plan.request_id))
        return subprotocol, out

    async def _refuse(self, scope: Scope, send: Send, upstream: _WsUpstream) -> None:
        app = self.app
        plan = self.plan
        upstream.abort()
        if self.state == "refused" and upstream.status >= 200:
            headers = [
                (name.lower(), value)
                for name, value in upstream.headers
                if response_header_class(name) == R_FORWARD
            ]
            body = bytes(upstream.body)
            headers.append((b"content-length", b"%d" % len(body)))
            headers.append((b"x-request-id", plan.request_id))
            await ws_reject(scope, send, upstream.status, headers, body)
            status = upstream.status
        else:
            answer = self.failure or BAD_GATEWAY_RESPONSE
            await ws_reject_answer(scope, send, answer, plan.request_id)
            status = answer.status
        app.finish(plan, b"GET", self.url, self.peer, self.t0, status, 0, self.timed_out)

    async def _downlink(self, send: Send) -> None:
        inbox = self.inbox
        while True:
            if inbox:
                frame = inbox.popleft()
                self.inbox_bytes -= len(frame.payload)
                if self.reading_paused and self.inbox_bytes <= self.app.high_water // 2:
                    self.reading_paused = False
                    upstream = self.upstream
                    if upstream is not None and upstream.transport is not None:
                        upstream.transport.resume_reading()
                if frame.opcode == wsframes.OP_TEXT:
                    await send({"type": "websocket.send", "text": frame.payload.decode("utf-8")})
                else:
                    await send({"type": "websocket.send", "bytes": frame.payload})
                continue
            if self.client_gone:
                return
            if self.close_code is not None:
                await send(
                    {
                        "type": "websocket.close",
                        "code": self.close_code,
                        "reason": self.close_reason,
                    }
                )
                return
            await self._wait()

    async def _uplink(self, receive: Receive) -> None:
        try:
            while True:
                message = await receive()
                kind = message["type"]
                if kind == "websocket.receive":
                    data = message.get("bytes")
                    if data is not None:
                        frame = wsframes.client_frame(wsframes.OP_BINARY, data)
                    else:
                        text: str = message.get("text") or ""
                        frame = wsframes.client_frame(wsframes.OP_TEXT, text.encode("utf-8"))
                    upstream = self.upstream
                    if upstream is None or self.close_code is not None:
                        continue
                    self.touch()
                    upstream.write(frame)
                    while self.uplink_paused and self.close_code is None:
                        waiter = self.uplink_waiter = self.app.loop.create_future()
                        try:
                            await waiter
                        finally:
                            self.uplink_waiter = None
                elif kind == "websocket.disconnect":
                    code = message.get("code", wsframes.CLOSE_NORMAL)
                    self.client_gone = True
                    if not wsframes.sendable_close_code(code):
                        code = (
                            wsframes.CLOSE_GOING_AWAY
                            if code == wsframes.CLOSE_ABNORMAL
                            else wsframes.CLOSE_NORMAL
                        )
                    self._close_upstream(code, message.get("reason") or "")
                    self._wake()
                    return
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("reading the websocket client failed")
            self.client_gone = True
            self._close_upstream(wsframes.CLOSE_GOING_AWAY)
            self._wake()

    # ------------------------------------------------------------------ events

    def wake_uplink(self) -> None:
        waiter = self.uplink_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def touch(self) -> None:
        self.deadline = self.app.loop.time() + self.idle

    def _close_upstream(self, code: int, reason: str = "") -> None:
        upstream = self.upstream
        if upstream is None:
            return
        if not self.sent_close and upstream.upgraded:
            self.sent_close = True
            upstream.write(
                wsframes.client_frame(wsframes.OP_CLOSE, wsframes.close_payload(code, reason))
            )
        upstream.close()

    def _finish_tunnel(self, code: int, reason: str) -> None:
        if self.close_code is None:
            self.close_code = code
            self.close_reason = reason
        self._wake()
        self.wake_uplink()

    def handshake_done(self) -> None:
        upstream = self.upstream
        if self.state == "handshake" and upstream is not None and upstream.status == 101:
            self.state = "open"
        else:
            self.state = "failed"
            self.failure = BAD_GATEWAY_RESPONSE
        self._wake()

    def handshake_refused(self) -> None:
        if self.state == "handshake":
            self.state = "refused"
            self._wake()

    def handshake_failed(self, message: str, *, too_large: bool = False) -> None:
        log.debug("websocket handshake failed: %s", message)
        if self.state == "handshake":
            self.state = "failed"
            self.failure = UPSTREAM_HEADER_TOO_LARGE if too_large else BAD_GATEWAY_RESPONSE
            self._wake()
        if self.upstream is not None:
            self.upstream.abort()

    def upstream_messages(self, messages: list[wsframes.Frame]) -> None:
        upstream = self.upstream
        assert upstream is not None
        for frame in messages:
            op = frame.opcode
            if op == wsframes.OP_TEXT or op == wsframes.OP_BINARY:
                if self.close_code is None:
                    self.inbox.append(frame)
                    self.inbox_bytes += len(frame.payload)
            elif op == wsframes.OP_PING:
                if not self.sent_close:
                    upstream.write(wsframes.client_frame(wsframes.OP_PONG, frame.payload))
            elif op == wsframes.OP_CLOSE:
                try:
                    code, reason = wsframes.parse_close(frame.payload)
                except wsframes.ProtocolError as exc:
                    self.upstream_protocol_error(exc)
                    return
                if code == wsframes.CLOSE_NO_STATUS:
                    code = wsframes.CLOSE_NORMAL
                self._close_upstream(code)  # the closing handshake's answer, then FIN
                self._finish_tunnel(code, reason)
                return
        if (
            self.inbox_bytes > self.app.high_water
            and not self.reading_paused
            and upstream.transport is not None
        ):
            self.reading_paused = True
            upstream.transport.pause_reading()
        self._wake()

    def upstream_protocol_error(self, exc: wsframes.ProtocolError) -> None:
        log.debug("websocket upstream protocol error: %s", exc)
        self._close_upstream(exc.code)
        code = (
            wsframes.CLOSE_TOO_BIG
            if exc.code == wsframes.CLOSE_TOO_BIG
            else wsframes.CLOSE_INTERNAL_ERROR
        )
        self._finish_tunnel(code, "upstream protocol error")

    def upstream_lost(self, exc: Exception | None) -> None:
        if self.state == "handshake":
            upstream = self.upstream
            if upstream is not None and upstream.status >= 200 and upstream.status != 101:
                self.state = "refused"  # a refusal whose body ended with the connection
            else:
                self.state = "failed"
                self.failure = GATEWAY_TIMEOUT if self.timed_out else BAD_GATEWAY
            self._wake()
            return
        self._finish_tunnel(
            wsframes.CLOSE_GOING_AWAY if self.timed_out else wsframes.CLOSE_INTERNAL_ERROR,
            "idle timeout" if self.timed_out else "upstream closed the connection",
        )

    def expire(self, code: int, reason: str) -> None:
        """Idle deadline passed (or the gateway stops): close both sides."""
        self.timed_out = True
        upstream = self.upstream
        if self.state == "handshake":
            if upstream is not None:
                upstream.abort()
            return
        self._close_upstream(code, reason)
        self._finish_tunnel(code, reason)

    def __repr__(self) -> str:
        return f"_WsProxy({self.url!r}, state={self.state})"


# =============================================================================== servers


def run_asgi_server(config: GatewayConfig) -> int:
    """Run the ASGI app under ``config.server`` (uvicorn or granian) with ``config.workers``
    processes; the workers read their configuration back from the environment."""
    export_config(config)
    slots: str | None = None
    if config.workers > 1:
        os.environ.pop("TURNOUT_WORKER_INDEX", None)
        slots = tempfile.mkdtemp(prefix="turnout-asgi-slots-")
        os.environ["TURNOUT_WORKER_SLOTS"] = slots
    try:
        if config.server == "granian":
            return _run_granian(config)
        return _run_uvicorn(config)
    finally:
        if slots is not None:
            shutil.rmtree(slots, ignore_errors=True)


def _run_uvicorn(config: GatewayConfig) -> int:
    import uvicorn

    uvicorn.run(
        "gateway.asgi:app",
        host=config.listen_host,
        port=config.listen_port,
        workers=config.workers,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        log_level="warning",
        access_log=False,
        proxy_headers=False,  # the dispatcher applies TURNOUT_TRUSTED_PROXIES itself
        server_header=False,  # the upstream's headers pass through; no duplicates
        date_header=False,
        backlog=2048,
        timeout_keep_alive=max(1, round(config.keepalive_timeout)),
        timeout_graceful_shutdown=max(1, math.ceil(config.drain_timeout)),
    )
    return 0


def _run_granian(config: GatewayConfig) -> int:
    from granian import Granian
    from granian.constants import Interfaces, Loops
    from granian.log import LogLevels

    Granian(
        "gateway.asgi:app",
        address=config.listen_host,
        port=config.listen_port,
        interface=Interfaces.ASGI,
        workers=config.workers,
        loop=Loops.uvloop,
        log_level=LogLevels.warning,
        backlog=2048,
        websockets=True,
        workers_kill_timeout=max(1, math.ceil(config.drain_timeout)),
    ).serve()
    return 0


app = GatewayApp()
