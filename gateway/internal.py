"""The internal listener: ``/healthz``, ``/readyz`` and ``/metrics`` on a private address.

Spec (routing.md, "Gateway answers"): gateway health and metrics never share a port with tenant
traffic, so a tenant's own ``/health`` is never shadowed. This server is deliberately tiny:
one request per connection (``Connection: close``), a request line and headers read within a
deadline and a size bound, an answer, then close. ``GET`` and ``HEAD`` only; anything else is 404.

Every metric sample carries a ``worker`` label: each worker process has its own listener (and
its own counters), and Prometheus sums across them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Final

import orjson

from gateway import build
from routing.table import TableState

if TYPE_CHECKING:
    from gateway.counters import Counters
    from gateway.flusher import CounterFlusher
    from routing.table import RouteTable

log = logging.getLogger("turnout.gateway.internal")

CONTENT_TYPE_METRICS: Final = b"text/plain; version=0.0.4; charset=utf-8"
CONTENT_TYPE_JSON: Final = b"application/json"
MAX_LINE: Final = 8 * 1024
MAX_HEADERS: Final = 100
READ_TIMEOUT: Final = 5.0
LINGER_TIMEOUT: Final = 0.5
LINGER_BYTES: Final = 1 << 20

_REASONS: Final = {
    200: b"OK",
    400: b"Bad Request",
    404: b"Not Found",
    431: b"Request Header Fields Too Large",
    500: b"Internal Server Error",
    503: b"Service Unavailable",
}
_CLASSES: Final = (("1xx", 1), ("2xx", 2), ("3xx", 3), ("4xx", 4), ("5xx", 5), ("other", 0))
_TABLE_STATES: Final = tuple(state.value for state in TableState)


# ---------------------------------------------------------------------- metrics rendering


def _value(v: float | bool) -> str:
    if isinstance(v, int):  # bool included: 0/1
        return str(int(v))
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return repr(v)


def _escape(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class _Exposition:
    """Accumulates text-format families: HELP and TYPE once, then the samples."""

    __slots__ = ("base", "lines")

    def __init__(self, worker: int) -> None:
        self.base = f'worker="{worker}"'
        self.lines: list[str] = []

    def family(
        self,
        name: str,
        kind: str,
        help_text: str,
        samples: list[tuple[Mapping[str, str], float | bool]],
    ) -> None:
        self.lines.append(f"# HELP {name} {help_text}")
        self.lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            extra = "".join(f',{k}="{_escape(v)}"' for k, v in labels.items())
            self.lines.append(f"{name}{{{self.base}{extra}}} {_value(value)}")

    def one(self, name: str, kind: str, help_text: str, value: float | bool) -> None:
        self.family(name, kind, help_text, [({}, value)])

    def render(self) -> bytes:
        return ("\n".join(self.lines) + "\n").encode()


_FLAT_METRICS: tuple[tuple[str, str, str, str], ...] = (
    (
        "turnout_route_table_mapped_bytes",
        "gauge",
        "Bytes of the mapped flat table file.",
        "mapped_bytes",
    ),
    (
        "turnout_route_table_file_records",
        "gauge",
        "Records in the mapped flat table file.",
        "file_records",
    ),
    (
        "turnout_route_table_overlay",
        "gauge",
        "Routes changed since the flat file was written (this worker's overlay).",
        "overlay",
    ),
    (
        "turnout_route_table_tombstones",
        "gauge",
        "Hosts deleted since the flat file was written.",
        "tombstones",
    ),
    (
        "turnout_route_table_hot_cache",
        "gauge",
        "Compiled routes (and misses) in this worker's hot cache.",
        "hot_cache",
    ),
    ("turnout_route_table_hot_hits_total", "counter", "Hot cache hits.", "hot_hits"),
    (
        "turnout_route_table_hot_misses_total",
        "counter",
        "Hot cache misses (a lookup in the mapped file).",
        "hot_misses",
    ),
    ("turnout_route_table_hot_hit_ratio", "gauge", "Hot cache hits / lookups.", "hot_hit_rate"),
    (
        "turnout_route_table_compactions_total",
        "counter",
        "Flat files written by compaction (writer worker).",
        "compactions",
    ),
    (
        "turnout_route_table_refused_files_total",
        "counter",
        "Flat files refused as corrupt, truncated or of another version.",
        "refused_files",
    ),
)


def render_metrics(
    *,
    counters: Counters,
    table_stats: Mapping[str, Any],
    pool_stats: Mapping[str, int],
    flusher: CounterFlusher | None,
    worker: int = 0,
) -> bytes:
    """Prometheus text exposition (format 0.0.4) of one worker's state. Pure: no I/O."""
    out = _Exposition(worker)
    out.family(
        "turnout_build_info",
        "gauge",
        "Build of the hot path: compiled is true when the mypyc-compiled modules are loaded.",
        [({"compiled": "true" if build.compiled() else "false"}, 1)],
    )
    by_class = counters.by_class
    out.family(
        "turnout_requests_total",
        "counter",
        "Answers sent to clients, by status class (other = no valid status).",
        [({"class": name}, by_class[i]) for name, i in _CLASSES],
    )
    out.one(
        "turnout_request_timeouts_total",
        "counter",
        "Requests answered after an upstream connect or read timeout.",
        counters.timeouts_total,
    )
    out.one(
        "turnout_upstream_connect_errors_total",
        "counter",
        "Failed connection attempts to upstream replicas.",
        counters.connect_errors,
    )
    out.family(
        "turnout_upstream_pool_connections",
        "gauge",
        "Upstream connections held by the pool, by state.",
        [
            ({"state": "idle"}, pool_stats.get("idle", 0)),
            ({"state": "active"}, pool_stats.get("active", 0)),
        ],
    )
    out.one(
        "turnout_upstream_pool_waiting",
        "gauge",
        "Requests waiting for an upstream connection (per-origin limit reached).",
        pool_stats.get("waiting", 0),
    )
    out.one(
        "turnout_upstream_connects_total",
        "counter",
        "Upstream connections opened.",
        pool_stats.get("connects", 0),
    )
    out.one(
        "turnout_upstream_reuses_total",
        "counter",
        "Requests sent on a kept-alive upstream connection.",
        pool_stats.get("reuses", 0),
    )
    out.one(
        "turnout_route_table_records",
        "gauge",
        "Route records held by the in-process route table.",
        int(table_stats.get("records", 0)),
    )
    out.one(
        "turnout_route_table_staleness_seconds",
        "gauge",
        "Seconds since the route table stopped being known-current (0 when current).",
        float(table_stats.get("staleness_seconds", 0.0)),
    )
    out.one(
        "turnout_route_table_resyncs_total",
        "counter",
        "Full resyncs of the route table from the store after the first sync.",
        int(table_stats.get("resyncs", 0)),
    )
    out.one(
        "turnout_route_table_stale",
        "gauge",
        "1 while the route table is served but not known to be current.",
        bool(table_stats.get("stale", False)),
    )
    out.one(
        "turnout_route_table_connected",
        "gauge",
        "1 while the route table's connection to the store is up.",
        bool(table_stats.get("connected", False)),
    )
    out.one(
        "turnout_route_table_ready",
        "gauge",
        "1 once the route table synced from the store or loaded a snapshot.",
        bool(table_stats.get("synced", False) or table_stats.get("from_snapshot", False)),
    )
    flat = table_stats.get("flat")
    if isinstance(flat, Mapping):
        for name, kind, help_text, key in _FLAT_METRICS:
            out.one(name, kind, help_text, flat.get(key, 0))
    state = table_stats.get("state")
    out.family(
        "turnout_route_table_state",
        "gauge",
        "1 for the route table's current state: cold (nothing loaded), snapshot (serving a "
        "snapshot file), current, stale (not known-current), lost (the store lost its data).",
        [({"state": name}, int(name == state)) for name in _TABLE_STATES],
    )
    out.one(
        "turnout_counter_flushes_total",
        "counter",
        "Successful writes of request counters to the store.",
        0 if flusher is None else flusher.flushes,
    )
    out.one(
        "turnout_counter_flush_errors_total",
        "counter",
        "Failed writes of request counters to the store (counts kept for retry).",
        0 if flusher is None else flusher.flush_errors,
    )
    out.one(
        "turnout_counter_pending_keys",
        "gauge",
        "Counter rows waiting for the next flush.",
        len(counters.pending),
    )
    out.one(
        "turnout_counter_dropped_total",
        "counter",
        "Counter rows dropped because the store stayed down past the memory bound.",
        counters.dropped,
    )
    return out.render()


# ---------------------------------------------------------------------- server


def _response(status: int, content_type: bytes, body: bytes, head_only: bool = False) -> bytes:
    head = (
        b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n"
        b"Cache-Control: no-store\r\nConnection: close\r\n\r\n"
        % (status, _REASONS.get(status, b"Unknown"), content_type, len(body))
    )
    return head if head_only else head + body


def _error(status: int, code: str, message: str, head_only: bool = False) -> bytes:
    body = orjson.dumps({"error": {"code": code, "message": message}})
    return _response(status, CONTENT_TYPE_JSON, body, head_only)


class _BadRequest(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class InternalServer:
    """Health, readiness and metrics listener for one worker."""

    def __init__(
        self,
        table: RouteTable,
        counters: Counters,
        *,
        pool_stats: Callable[[], dict[str, int]],
        flusher: CounterFlusher | None,
        host: str = "127.0.0.1",
        port: int = 9901,
        worker: int = 0,
    ) -> None:
        self.table = table
        self.counters = counters
        self.pool_stats = pool_stats
        self.flusher = flusher
        self.host = host
        self._port = port
        self.worker = worker
        self.requests = 0
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[Any]] = set()

    @property
    def port(self) -> int:
        """The bound port once started (so ``port=0`` works), else the configured one."""
        return self._port

    async def start(self) -> None:
        if self._server is not None:
            raise RuntimeError("internal server already started")
        self._server = await asyncio.start_server(
            self._handle, self.host, self._port, limit=MAX_LINE
        )
        self._port = self._server.sockets[0].getsockname()[1]
        log.info("internal listener on %s:%d", self.host, self._port)

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for task in list(self._handlers):
            task.cancel()
        for task in list(self._handlers):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await server.wait_closed()

    # ------------------------------------------------------------------ one connection

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
        unread = False  # input may be left after the answer (a rejected request)
        try:
            try:
                async with asyncio.timeout(READ_TIMEOUT):
                    method, path = await self._read_head(reader)
            except _BadRequest as exc:
                answer = _error(exc.status, exc.code, str(exc))
                unread = True
            except (TimeoutError, ConnectionError, asyncio.IncompleteReadError):
                return  # slow, gone or truncated client: nothing sensible to answer
            else:
                try:
                    answer = self._answer(method, path)
                except Exception:
                    log.exception("internal listener failed to answer %r %r", method, path)
                    answer = _error(500, "internal_error", "internal error")
            self.requests += 1
            writer.write(answer)
            await writer.drain()
            if unread:
                await self._linger(reader, writer)
        except ConnectionError:
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
            if task is not None:
                self._handlers.discard(task)

    @staticmethod
    async def _linger(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Half-close, then swallow what the client still sends (briefly, bounded).

        After a 400/431 the request may be partly unread; closing with unread input makes the
        kernel send RST, which can destroy the answer before the client reads it.
        """
        with contextlib.suppress(OSError, TimeoutError, RuntimeError):
            if writer.can_write_eof():
                writer.write_eof()
            async with asyncio.timeout(LINGER_TIMEOUT):
                left = LINGER_BYTES
                while left > 0:
                    data = await reader.read(min(left, 65536))
                    if not data:
                        break
                    left -= len(data)

    async def _read_head(self, reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
        line = await self._read_line(reader)
        parts = line.split()
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
            raise _BadRequest(400, "bad_request", "malformed request line")
        method, target, _version = parts
        # Read the headers through the blank line, so a normal request leaves nothing unread.
        for _ in range(MAX_HEADERS + 1):
            if not (await self._read_line(reader)).strip():
                break
        else:
            raise _BadRequest(431, "headers_too_large", "too many request headers")
        path = target.split(b"?", 1)[0]
        return method, path

    @staticmethod
    async def _read_line(reader: asyncio.StreamReader) -> bytes:
        try:
            line = await reader.readuntil(b"\n")
        except asyncio.LimitOverrunError:
            raise _BadRequest(431, "headers_too_large", "request line or header too long") from None
        except asyncio.IncompleteReadError as exc:
            if exc.partial:
                raise
            raise ConnectionResetError("client closed the connection") from None
        return line

    def _answer(self, method: bytes, path: bytes) -> bytes:
        head_only = method == b"HEAD"
        if method not in (b"GET", b"HEAD"):
            return _error(404, "not_found", "not found")
        if path == b"/healthz":
            return _response(200, CONTENT_TYPE_JSON, b'{"status":"ok"}', head_only)
        if path == b"/readyz":
            ready = self.table.ready
            body = orjson.dumps(
                {
                    "status": "ready" if ready else "not_ready",
                    "compiled": build.compiled(),
                    "table": self.table.stats(),
                }
            )
            return _response(200 if ready else 503, CONTENT_TYPE_JSON, body, head_only)
        if path == b"/metrics":
            body = render_metrics(
                counters=self.counters,
                table_stats=self.table.stats(),
                pool_stats=self.pool_stats(),
                flusher=self.flusher,
                worker=self.worker,
            )
            return _response(200, CONTENT_TYPE_METRICS, body, head_only)
        return _error(404, "not_found", "not found", head_only)

    def __repr__(self) -> str:
        state = "listening" if self._server is not None else "stopped"
        return f"InternalServer({self.host}:{self._port}, worker={self.worker}, {state})"
