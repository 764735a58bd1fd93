"""A raw-socket upstream that misbehaves on purpose, for the gateway's hardening tests.

It runs in a background thread of the test process (its own asyncio loop) on a free loopback
port, so a test reads what it saw directly. The request target chooses the behaviour::

    /<behaviour>/<token>[?query]

``<behaviour>`` is a key of :data:`BEHAVIOURS` (each a few lines of raw bytes and timing:
early answers, unrequested 101s, oversized and endless heads, malformed framing, bodies where
none may be, extra and late bytes, …); ``<token>`` is any string the test uses to recognise its
own exchange. ``/ok/<token>`` is the well-behaved answer: ``200`` with the body
``ok <token>`` and ``Content-Length``, kept alive.

Every accepted connection is recorded (:class:`ConnRecord`): the requests read on it — the
request head, the body bytes actually read and whether the body was complete — any other bytes
that arrived on it (after an unrequested ``101``: what a tunnel would have leaked), and how it
ended (``eof``: the peer closed; ``reset``; ``server``: this upstream closed it). From that a test
tells whether the gateway discarded a pool connection after a hostile exchange, and whether one
exchange's bytes ever reached another.

Like an origin that reads a body it did not wait for (Node, uvicorn), the upstream keeps reading
the declared remainder of a request body after an early answer: on a connection the gateway
wrongly reused, the next request's bytes are swallowed as that body (the desync of issue 17).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Self

from tests.support.rawhttp import first_header

MiB = 1024 * 1024


def gateway_args(server: str, *, head_timeout: float, flush: float) -> list[str]:
    """``turnout gateway`` flags for tests against this upstream: the front-end, one pooled
    connection per origin (a desynced connection would be the only one there is), a short
    response-head deadline and a fast counter flush."""
    return [
        "--server",
        server,
        "--pool-max-per-origin",
        "1",
        "--response-header-timeout",
        str(head_timeout),
        "--flush-interval",
        str(flush),
        "--header-timeout",
        "2",
    ]


class _Closed(Exception):
    """The peer closed (or reset) the connection while the upstream was reading."""


@dataclass
class SeenRequest:
    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes = b""
    complete: bool = False  # the whole body (by its framing) was read

    @property
    def behaviour(self) -> str:
        return self.target.split("?", 1)[0].split("/")[1] if self.target.count("/") >= 2 else ""

    @property
    def token(self) -> str:
        parts = self.target.split("?", 1)[0].split("/", 2)
        return parts[2] if len(parts) == 3 else ""

    def header(self, name: str) -> str | None:
        return first_header(self.headers, name)


@dataclass
class ConnRecord:
    id: int
    requests: list[SeenRequest] = field(default_factory=list)
    extra: bytes = b""  # bytes read that were not part of any request (e.g. after a 101)
    ended: str | None = None  # eof | reset | server | None (still open)

    def tokens(self) -> list[str]:
        return [r.token for r in self.requests]


@dataclass
class _Exchange:
    """What a behaviour works with: the connection, the request head, the body reader."""

    upstream: HostileUpstream
    conn: ConnRecord
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    request: SeenRequest
    _left: int  # Content-Length body bytes still unread (-1: chunked)

    def write(self, data: bytes) -> None:
        self.writer.write(data)

    async def drain(self) -> None:
        await self.writer.drain()

    async def read_body(self) -> None:
        """Read the rest of the request body (Content-Length or chunked), recording it."""
        req = self.request
        while self._left > 0:  # piece by piece: what did arrive is recorded, even on a reset
            data = await self.reader.read(min(self._left, 65536))
            if not data:
                raise _Closed
            req.body += data
            self._left -= len(data)
        if self._left == -1:
            while True:
                line = await self.reader.readuntil(b"\r\n")
                size = int(line.split(b";", 1)[0].strip(), 16)
                if size == 0:
                    while await self.reader.readuntil(b"\r\n") != b"\r\n":
                        pass
                    break
                req.body += await self.reader.readexactly(size)
                await self.reader.readexactly(2)
            self._left = 0
        req.complete = True

    async def hold(self) -> None:
        """Read and record whatever else arrives, until the peer closes."""
        while True:
            data = await self.reader.read(65536)
            if not data:
                raise _Closed
            self.conn.extra += data

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


# What a behaviour returns: serve the next request on this connection, or close it.
KEEP = "keep"
CLOSE = "close"
Behaviour = Callable[[_Exchange], Awaitable[str]]


def _ok_bytes(token: str, *, extra_headers: bytes = b"") -> bytes:
    body = f"ok {token}".encode()
    return b"HTTP/1.1 200 OK\r\n%bContent-Length: %d\r\n\r\n%b" % (extra_headers, len(body), body)


def _fixed(data: bytes | Callable[[SeenRequest], bytes], then: str = KEEP) -> Behaviour:
    """Read the request body, write ``data`` in one write, then keep or close the connection.
    ``then="hold"`` keeps the socket open and reads nothing more as requests."""

    async def run(ex: _Exchange) -> str:
        await ex.read_body()
        ex.write(data(ex.request) if callable(data) else data)
        await ex.drain()
        if then == "hold":
            await ex.hold()
        return then

    return run


async def _ok(ex: _Exchange) -> str:
    await ex.read_body()
    ex.write(_ok_bytes(ex.request.token))
    return KEEP


async def _early_401(ex: _Exchange) -> str:
    # Answer before reading the body (Node, uvicorn do), then read the declared remainder.
    ex.write(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 12\r\n\r\nunauthorized")
    await ex.drain()
    await ex.read_body()
    return KEEP


async def _unrequested_101(ex: _Exchange) -> str:
    await ex.read_body()
    ex.write(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
    )
    await ex.drain()
    await ex.hold()  # whatever a tunnel would carry lands in conn.extra
    return CLOSE


async def _endless_head(ex: _Exchange) -> str:
    # A head that never ends: 1 MiB of one header value every 50 ms (the probe).
    await ex.read_body()
    ex.write(b"HTTP/1.1 200 OK\r\nX-Endless: ")
    piece = b"a" * MiB
    while True:
        ex.write(piece)
        await ex.drain()
        await ex.sleep(0.05)


async def _trickle_head(ex: _Exchange) -> str:
    # A small header line every 50 ms, forever: under every size limit, never complete.
    await ex.read_body()
    ex.write(b"HTTP/1.1 200 OK\r\n")
    i = 0
    while True:
        ex.write(b"X-Trickle-%d: %d\r\n" % (i % 50, i))
        await ex.drain()
        i += 1
        await ex.sleep(0.05)


async def _stalled_head(ex: _Exchange) -> str:
    await ex.read_body()
    ex.write(b"HTTP/1.1 200 OK\r\nX-Stalled: yes\r\n")
    await ex.drain()
    await ex.hold()
    return CLOSE


async def _continue_storm(ex: _Exchange) -> str:
    # Interim responses forever, never a final one: 25 600 bytes a round, so the gateway's
    # 64 KiB head budget is crossed in three rounds, well inside the test's 0.5 s head deadline
    # even on a loaded box (64 a round took 41 rounds and lost that race under load: a 504).
    await ex.read_body()
    while True:
        ex.write(b"HTTP/1.1 100 Continue\r\n\r\n" * 1024)
        await ex.drain()
        await ex.sleep(0.005)


async def _late_bytes(ex: _Exchange) -> str:
    # A complete response, then (once the gateway may have pooled the connection) another one
    # nobody asked for.
    await ex.read_body()
    ex.write(_ok_bytes(ex.request.token))
    await ex.drain()
    await ex.sleep(0.05)
    ex.write(b"HTTP/1.1 200 OK\r\nContent-Length: 14\r\n\r\nhostile-SECRET")
    await ex.drain()
    return KEEP


async def _bad_chunk_late(ex: _Exchange) -> str:
    # A valid head and first chunk; the malformed chunk size comes in a later read.
    await ex.read_body()
    ex.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n")
    await ex.drain()
    await ex.sleep(0.05)
    ex.write(b"ZZ\r\nhostile-SECRET\r\n0\r\n\r\n")
    await ex.drain()
    await ex.hold()
    return CLOSE


async def _close_mid_body(ex: _Exchange) -> str:
    await ex.read_body()
    ex.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\npartial...")
    await ex.drain()
    return CLOSE


def _headers(n: int, size: int = 0) -> bytes:
    value = b"v" * size if size else b"v"
    return b"".join(b"X-H%d: %b\r\n" % (i, value) for i in range(n))


_SECRET = b"hostile-SECRET"
_TRAILING = b"HTTP/1.1 200 OK\r\nContent-Length: 14\r\n\r\n" + _SECRET


def _with_trailing(req: SeenRequest) -> bytes:
    return _ok_bytes(req.token) + _TRAILING


def _wrong_upgrade(req: SeenRequest) -> bytes:
    return b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n"


BEHAVIOURS: dict[str, Behaviour] = {
    "ok": _ok,
    # defect 1: an answer before the request body was read
    "early-401": _early_401,
    # defect 2: upgrades nobody asked for (or to another protocol than asked)
    "unrequested-101": _unrequested_101,
    "101-without-upgrade": _fixed(b"HTTP/1.1 101 Switching Protocols\r\n\r\n", "hold"),
    "101-wrong-protocol": _fixed(_wrong_upgrade, "hold"),
    # defect 3: response heads over the limits, or never complete
    "huge-header": _fixed(
        b"HTTP/1.1 200 OK\r\nX-Big: " + b"b" * MiB + b"\r\nContent-Length: 2\r\n\r\nok", "hold"
    ),
    "huge-head": _fixed(
        b"HTTP/1.1 200 OK\r\n" + _headers(2048, 8 * 1024) + b"Content-Length: 2\r\n\r\nok", "hold"
    ),
    "many-headers": _fixed(
        b"HTTP/1.1 200 OK\r\n" + _headers(20_000) + b"Content-Length: 2\r\n\r\nok", "hold"
    ),
    "101-headers": _fixed(
        b"HTTP/1.1 200 OK\r\n" + _headers(101) + b"Content-Length: 2\r\n\r\nok", "hold"
    ),
    "100-headers": _fixed(
        lambda r: _ok_bytes(r.token, extra_headers=_headers(99))  # + Content-Length = 100
    ),
    "endless-head": _endless_head,
    "trickle-head": _trickle_head,
    "stalled-head": _stalled_head,
    "continue-storm": _continue_storm,
    # an interim head, then a final head without a reason phrase (httptools kept the interim
    # head's reason: the client got "200 Continue")
    "continue-no-reason": _fixed(
        lambda r: (
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200\r\nContent-Length: %d\r\n\r\nok %b"
            % (len(r.token) + 3, r.token.encode())
        )
    ),
    "early-hints": _fixed(
        lambda r: (
            b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n" + _ok_bytes(r.token)
        )
    ),
    # defect 4: invalid framing
    "cl-and-te": _fixed(
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"e\r\nhostile-SECRET\r\n0\r\n\r\n"
    ),
    "duplicate-cl": _fixed(
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 16\r\n\r\nokhostile-SECRET"
    ),
    "duplicate-cl-same": _fixed(
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok"
    ),
    "negative-cl": _fixed(b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\nok", "hold"),
    "bad-chunk-size": _fixed(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nZ\r\nZZ\r\n0\r\n\r\n", "hold"
    ),
    "chunk-size-overflow": _fixed(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"10000000000000000000\r\nx\r\n0\r\n\r\n",
        "hold",
    ),
    "bad-chunk-late": _bad_chunk_late,
    "obs-fold": _fixed(b"HTTP/1.1 200 OK\r\nX-Fold: a\r\n b\r\nContent-Length: 2\r\n\r\nok"),
    "bare-cr": _fixed(b"HTTP/1.1 200 OK\r\nX-Cr: a\rb\r\nContent-Length: 2\r\n\r\nok"),
    "lf-only": _fixed(b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok"),
    "nul-in-header": _fixed(b"HTTP/1.1 200 OK\r\nX-Nul: a\x00b\r\nContent-Length: 2\r\n\r\nok"),
    "space-in-name": _fixed(b"HTTP/1.1 200 OK\r\nX Bad: a\r\nContent-Length: 2\r\n\r\nok"),
    "status-4-digits": _fixed(b"HTTP/1.1 2000 OK\r\nContent-Length: 2\r\n\r\nok", "hold"),
    "status-2-digits": _fixed(b"HTTP/1.1 20 OK\r\nContent-Length: 2\r\n\r\nok", "hold"),
    "not-http": _fixed(b"SMTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", "hold"),
    "garbage": _fixed(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03hostile-SECRET", "hold"),
    # defect 7: transfer codings the gateway cannot pass on
    "te-gzip": _fixed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nhostile-SECRET", CLOSE),
    "te-gzip-chunked": _fixed(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
        b"e\r\nhostile-SECRET\r\n0\r\n\r\n"
    ),
    "te-chunked-gzip": _fixed(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\nhostile-SECRET", CLOSE
    ),
    # bodies where none may be, extra and late bytes
    "head-with-body": _fixed(_with_trailing),  # the test sends HEAD: the body is extra bytes
    "204-with-body": _fixed(b"HTTP/1.1 204 No Content\r\nContent-Length: 14\r\n\r\n" + _SECRET),
    "304-with-body": _fixed(b"HTTP/1.1 304 Not Modified\r\n\r\n" + _SECRET),
    "extra-response": _fixed(_with_trailing),
    "late-bytes": _late_bytes,
    "close-mid-body": _close_mid_body,
    # neighbours that are valid HTTP: passed on, framed by the gateway
    "close-delimited": _fixed(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nbody until close", CLOSE
    ),
    "http10-close-delimited": _fixed(b"HTTP/1.0 200 OK\r\n\r\nbody until close", CLOSE),
    "connection-close": _fixed(
        lambda r: _ok_bytes(r.token, extra_headers=b"Connection: close\r\n"), CLOSE
    ),
}


class HostileUpstream:
    """The hostile upstream on ``127.0.0.1:<free port>``, served from a background thread."""

    def __init__(self) -> None:
        self.port = 0
        self._lock = threading.Lock()
        self._conns: list[ConnRecord] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> Self:
        self._thread = threading.Thread(target=self._run, name="hostile-upstream", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("hostile upstream did not start")
        return self

    def _run(self) -> None:
        loop = self._loop = asyncio.new_event_loop()
        self._server = loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.port = self._server.sockets[0].getsockname()[1]
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.close()

    def stop(self) -> None:
        loop = self._loop
        if loop is None or self._thread is None:
            return

        async def shutdown() -> None:
            if self._server is not None:
                self._server.close()
            for writer in list(self._writers):
                writer.transport.abort()  # every handler then ends on its own
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            if tasks:
                _, stuck = await asyncio.wait(tasks, timeout=2)
                for task in stuck:  # a behaviour asleep between writes
                    task.cancel()
                await asyncio.gather(*stuck, return_exceptions=True)
            asyncio.get_running_loop().stop()

        asyncio.run_coroutine_threadsafe(shutdown(), loop)
        self._thread.join(10)
        self._loop = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # ------------------------------------------------------------------ what it saw

    def connections(self) -> list[ConnRecord]:
        with self._lock:
            return list(self._conns)

    def conn_with(self, token: str) -> ConnRecord | None:
        """The connection that carried the request with ``token`` (None: no such request)."""
        for conn in self.connections():
            if token in conn.tokens():
                return conn
        return None

    def request(self, token: str) -> SeenRequest | None:
        for conn in self.connections():
            for req in conn.requests:
                if req.token == token:
                    return req
        return None

    def wait_for(
        self, what: Callable[[], bool], timeout: float = 5.0, message: str = "condition"
    ) -> None:
        """Poll ``what`` until true; AssertionError with ``message`` at the deadline."""
        deadline = time.monotonic() + timeout
        while not what():
            if time.monotonic() > deadline:
                raise AssertionError(f"hostile upstream: {message} within {timeout} s")
            time.sleep(0.005)

    def wait_request(self, token: str, timeout: float = 5.0) -> SeenRequest:
        self.wait_for(lambda: self.request(token) is not None, timeout, f"request {token!r} seen")
        req = self.request(token)
        assert req is not None
        return req

    def wait_ended(self, conn: ConnRecord, timeout: float = 5.0) -> str:
        """How ``conn`` ended, once it has (the gateway closing or resetting it)."""
        self.wait_for(lambda: conn.ended is not None, timeout, f"connection {conn.id} closed")
        assert conn.ended is not None
        return conn.ended

    # ------------------------------------------------------------------ serving

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with self._lock:
            conn = ConnRecord(len(self._conns) + 1)
            self._conns.append(conn)
        self._writers.add(writer)
        try:
            while True:
                ex = await self._read_request(conn, reader, writer)
                if ex is None:
                    conn.ended = "eof"
                    return
                behaviour = BEHAVIOURS.get(ex.request.behaviour, _ok)
                if await behaviour(ex) != KEEP:
                    await writer.drain()
                    conn.ended = "server"
                    return
        except _Closed:
            conn.ended = "eof"
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            conn.ended = "eof"
        except ConnectionError:
            conn.ended = "reset"
        except asyncio.CancelledError:
            conn.ended = conn.ended or "server"
            raise
        finally:
            self._writers.discard(writer)
            with contextlib.suppress(Exception):
                writer.close()

    async def _read_request(
        self, conn: ConnRecord, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> _Exchange | None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as exc:
            conn.extra += exc.partial
            return None
        lines = head[:-4].decode("latin-1").split("\r\n")
        method, target, _ = [*lines[0].split(" ", 2), "", ""][:3]
        headers = []
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers.append((name, value.strip()))
        req = SeenRequest(method, target, headers)
        left = 0
        te = (req.header("transfer-encoding") or "").lower()
        if "chunked" in te:
            left = -1
        elif req.header("content-length"):
            left = int(req.header("content-length") or 0)
        if left == 0:
            req.complete = True
        with self._lock:
            conn.requests.append(req)
        return _Exchange(self, conn, reader, writer, req, left)

    def __repr__(self) -> str:
        return f"<HostileUpstream 127.0.0.1:{self.port} connections={len(self._conns)}>"
