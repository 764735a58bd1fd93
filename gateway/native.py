"""The native HTTP/1.1 front-end: ``asyncio.Protocol`` + :func:`gateway.head.parse_request`.

Theory of operation
-------------------
One :class:`ClientConnection` per client socket; one :class:`Exchange` per request, which is
also the upstream pool's *sink* (see :mod:`gateway.pool`): the parser, the dispatch core and
the upstream connection call each other directly. A request head is parsed, classified and
rewritten in one call (:mod:`gateway.head`, compiled as ``gateway._headc``); the body that
follows is read by its framing — a Content-Length count, or :mod:`gateway.chunked` — and an
incomplete head waits in ``buf`` for the next read. There is no task and no timer per request:
the :class:`NativeServer` runs one periodic sweep per worker that checks every deadline (header
read, keep-alive idle, tunnel idle, upstream read idle, pool waits).

Pipelining: requests are parsed as bytes arrive; the first one in flight is *current*, later
ones wait in order (their bodies buffered, reading paused above the high-water mark) and are
answered strictly in order. Flow control both ways: a slow upstream pauses reading from the
client; a slow client pauses reading from the upstream.

Edge duties (the model is uvicorn's httptools protocol, whose llhttp rules the head parser and
the chunked decoder keep, differential tests in tests/gateway prove): header-read timeout (slowloris),
header size/count limits (431), CL+TE (400 and close: a smuggled second request is never
parsed), malformed Host (400), ``Expect: 100-continue`` answered by the gateway once the route
and size are known, HTTP/1.0 clients (close-delimited responses), chunked and fixed-length
request bodies streamed, body limit (413 up front and while streaming), WebSocket/Upgrade
tunnelled only after the upstream's 101 (an upgrade request with a body
is refused, 400: its head goes upstream unframed), graceful drain.

A request is dispatched once the read that completed its head has been parsed whole, so a
malformed body in that same read is answered 400 before anything reaches an upstream. Bad bytes
stop the parser for good: the requests parsed before them are answered in order, then the bad
one (400, or 431), then the connection closes (nginx: ``200, 200, 400``). Bad bytes inside a
body already being forwarded abort that upstream request (a reset: the origin never takes the
truncated body as complete). A response that ends before its request did (an early 401 to an
upload) says ``Connection: close``, and the connection closes *lingering*: the answer is
followed by a FIN and whatever the client still sends is read and dropped for a while, so the
close does not turn into a reset that destroys the answer before the client read it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Final, cast

from gateway.chunked import BIG_RUN, Chunk, ChunkedDecoder, ChunkError
from gateway.dispatch import Dispatcher, ParsedHead, Plan
from gateway.errors import (
    BAD_REQUEST,
    PAYLOAD_TOO_LARGE,
    REASONS,
    Answer,
)
from gateway.exchange import Exchange
from gateway.forwarding import answer_bytes
from gateway.head import parse_request
from gateway.headers import (
    HEAD_CHUNKED,
    HEAD_EXPECT_CONTINUE,
    HEAD_KEEP_ALIVE,
    HEAD_UPGRADE,
    HEAD_VERSION_10,
)
from gateway.phase import ABORTED, DONE, SENDING

if TYPE_CHECKING:
    from gateway.core import GatewayCore

log = logging.getLogger("turnout.gateway.native")

_CONTINUE: Final = b"HTTP/1.1 100 Continue\r\n\r\n"
_STATUS_LINES: Final = {
    code: b"HTTP/1.1 %d %s\r\n" % (code, reason) for code, reason in REASONS.items()
}


# A reason for reading to stay paused (see ClientConnection.pause_for): the parser stopped.
_STOPPED: Final = object()

# The class of parse_request's refusals, whichever implementation runs (gateway.head picks the
# compiled twin when it is built; its classes are its own).
_REJECTED: Final = type(parse_request(b"\x00", 64, 4))
_CONNECT: Final = b"CONNECT"

_MAX_PIPELINE: Final = 16  # queued requests per connection before reading pauses


class ClientConnection(asyncio.Protocol):
    """One client TCP connection speaking HTTP/1.1 (or 1.0) to the gateway."""

    __slots__ = (
        "_paused_by",
        "_reading_paused",
        "_writing_paused",
        "body_left",
        "buf",
        "chunks",
        "closed",
        "current",
        "deadline",
        "draining",
        "head_deadline",
        "last",
        "parsing",
        "peer",
        "peer_b",
        "queue",
        "server",
        "starting",
        "stopped",
        "transport",
        "tunnel",
        "tunnel_deadline",
        "tunnel_idle",
    )

    def __init__(self, server: NativeServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.buf = b""  # received bytes of a request head not complete yet
        self.body_left = 0  # Content-Length bytes of the parsed request's body still to come
        self.chunks: ChunkedDecoder | None = None  # its chunked body, while one is read
        self.last = False  # the request parsed last ends the connection (no keep-alive)
        self.peer = ""
        self.peer_b = b""
        self.current: Exchange | None = None
        self.parsing: Exchange | None = None
        self.queue: deque[Exchange] = deque()
        self.closed = False
        self.stopped = False  # the parser stopped (bad bytes, or an upgrade): parse nothing more
        self.starting: Exchange | None = None  # dispatched once the current read is parsed
        self.draining = server.draining
        self.deadline = 0.0  # keep-alive idle deadline (0 = none)
        self.head_deadline = 0.0  # request head must be complete by then (0 = none)
        self.tunnel: Exchange | None = None
        self.tunnel_deadline = 0.0
        self.tunnel_idle = 0.0
        self._paused_by: set[object] = set()  # exchanges (or the connection) pausing reads
        self._reading_paused = False  # transport.pause_reading() called and not yet undone
        self._writing_paused = False

    # ------------------------------------------------------------ asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.transport.set_write_buffer_limits(high=self.server.high_water)
        peer = transport.get_extra_info("peername")
        self.peer = peer[0] if isinstance(peer, tuple) else "unix"
        self.peer_b = self.peer.encode()
        self.server.connections.add(self)
        now = self.server.time()
        self.deadline = now + self.server.keepalive_timeout
        self.head_deadline = now + self.server.header_timeout

    def data_received(self, data: bytes) -> None:
        tunnel = self.tunnel
        if tunnel is not None:
            if tunnel.tunnel_buf is not None:
                # Not open until the upstream says 101: hold the bytes, bounded, and let only
                # the upstream's answer (not the client's chatter) extend the deadline.
                tunnel.tunnel_buf.append(data)
                tunnel.buffered += len(data)
                if tunnel.buffered > self.server.high_water:
                    self.pause_for(tunnel)
            elif tunnel.conn is not None:
                self.tunnel_deadline = self.server.loop.time() + self.tunnel_idle
                tunnel.conn.write(data)
            return
        if self.closed or self.stopped:
            return  # lingering, or past bad bytes: never parsed
        held = self.buf
        if held:
            if (
                self.parsing is None
                and data.find(b"\n") < 0
                and len(held) + len(data) <= self.server.max_header_bytes
            ):
                # A head completes only with a line feed: without one, appending is enough (a
                # head trickled in byte by byte is parsed once per line, not once per byte).
                self.buf = held + data
                return
            data = held + data
        self._parse(data)
        ex = self.starting
        if ex is not None:
            # Dispatched only now that the whole read is parsed: bad bytes later in it were
            # answered (400) without anything reaching an upstream.
            self.starting = None
            if not self.closed:
                self._start(ex)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.buf = b""
        self.chunks = None
        self.server.connections.discard(self)
        for ex in (self.current, *self.queue):
            if ex is not None and ex.conn is not None:
                conn, ex.conn = ex.conn, None
                conn.abort()  # abandoned response: never return its socket to the pool
        self.current = None
        self.queue.clear()
        self.transport = None

    def pause_writing(self) -> None:
        self._writing_paused = True
        ex = self.tunnel or self.current
        if ex is not None and ex.conn is not None:
            ex.conn.pause_reading()

    def resume_writing(self) -> None:
        self._writing_paused = False
        ex = self.tunnel or self.current
        if ex is not None and ex.conn is not None:
            ex.conn.resume_reading()

    # ------------------------------------------------------------ parsing

    def _parse(self, buf: bytes) -> None:
        """Parse what ``buf`` holds: request heads in one call each (:mod:`gateway.head`), the
        bodies by their framing (Content-Length, or :mod:`gateway.chunked`). What is left of an
        incomplete head waits in ``self.buf`` for the next read."""
        server = self.server
        self.buf = b""
        pos = 0
        n = len(buf)
        while pos < n:
            ex = self.parsing
            if ex is not None:  # inside a request body
                dec = self.chunks
                if dec is None:
                    left = self.body_left
                    take = n - pos
                    if take > left:
                        take = left
                    chunk: Chunk
                    if take == n:
                        chunk = buf
                    elif take > BIG_RUN:
                        chunk = memoryview(buf)[pos : pos + take]  # no copy of a large run
                    else:
                        chunk = buf[pos : pos + take]
                    pos += take
                    left -= take
                    self.body_left = left
                    if not ex.request_done:
                        ex.body_chunk(chunk)
                    if left > 0:
                        return
                else:
                    try:
                        pos = dec.feed(buf, pos, ex)
                    except ChunkError as exc:
                        self._fail_head(exc.answer)
                        return
                    if not dec.done:
                        return
                    self.chunks = None
                if not self._message_end(buf, pos):
                    return
                continue
            if self.closed or self.stopped:
                return  # e.g. bytes after a request we refused: never parsed
            if self.last:
                # llhttp: data after a request that closes the connection is an error; it is
                # never answered (the connection closes after the answer before it).
                self._fail_head(BAD_REQUEST)
                return
            rest = buf if pos == 0 else buf[pos:]
            head = parse_request(rest, server.max_header_bytes, server.max_headers)
            if head is None:
                self.buf = rest
                # The header timeout runs once nothing is in flight (see finish): behind a slow
                # answer, or with reading paused, the rest of the head is not the client's delay.
                if self.head_deadline == 0.0 and self.current is None and rest.strip(b"\r\n"):
                    self.head_deadline = server.time() + server.header_timeout
                return
            if type(head) is _REJECTED:
                self._fail_head(head.answer)  # type: ignore[union-attr]
                return
            pos += head.end  # type: ignore[union-attr]
            self._head(head)  # type: ignore[arg-type]
            if self.chunks is None and self.body_left == 0 and not self._message_end(buf, pos):
                return

    def _head(self, head: ParsedHead) -> None:
        """A complete request head: its exchange joins the pipeline; its body is read next."""
        summary = head.summary  # one read (see RequestHead.summary)
        flags = summary[7]
        ex = Exchange(self)
        ex.head = head
        ex.summary = summary
        method = summary[0]
        ex.method = method
        ex.url = summary[1]
        keep_alive = bool(flags & HEAD_KEEP_ALIVE)
        ex.version_10 = bool(flags & HEAD_VERSION_10)
        ex.keep_alive = keep_alive and not self.draining
        self.last = not keep_alive or bool(flags & HEAD_UPGRADE)
        self.parsing = ex
        self.head_deadline = 0.0
        self.deadline = 0.0
        if self.current is None:
            self.current = ex
            self.starting = ex  # see data_received
        else:
            self.queue.append(ex)
            if len(self.queue) >= _MAX_PIPELINE:
                self.pause_for(self)  # bounded pipelining: stop reading until answers drain
        self.body_left = 0
        self.chunks = None  # (both already so, unless a body was abandoned: never carried over)
        if method == _CONNECT:
            return  # llhttp reads no body for CONNECT: what follows is the tunnel
        if flags & HEAD_CHUNKED:
            server = self.server
            self.chunks = ChunkedDecoder(
                server.max_header_bytes, server.max_header_bytes, server.max_headers
            )
        else:
            length = summary[6]
            if length:
                self.body_left = length

    def _message_end(self, buf: bytes, pos: int) -> bool:
        """The request parsed last is complete (its body too). False: parse nothing more of
        ``buf`` (an upgrade: what follows is the new protocol)."""
        ex = self.parsing
        self.parsing = None
        if ex is None:
            return False
        ex.body_end()
        summary = ex.summary
        if summary is not None and summary[7] & HEAD_UPGRADE:
            self._upgrade_received(buf[pos:])
            return False
        return not self.closed

    # ------------------------------------------------------------ request lifecycle

    def _start(self, ex: Exchange) -> None:
        server = self.server
        ex.t0 = server.time()
        if ex.verdict is not None:  # the malformed request's turn: answer, then close
            self.answer(ex, ex.verdict, server.dispatcher.request_id(None))
            return
        head = ex.head
        summary = ex.summary
        assert head is not None and summary is not None
        result = server.dispatcher.prepare_head(head, summary, self.peer, self.peer_b, ex.t0)
        if not isinstance(result, Plan):
            answer, rid = result
            self.answer(ex, answer, rid)
            return
        ex.plan = result
        policy = result.route.policy
        if ex.body_bytes > policy.max_body_bytes:  # a pipelined body buffered while waiting
            self.answer(ex, PAYLOAD_TOO_LARGE, result.request_id)
            return
        if result.upgrade is not None:
            if result.has_body:
                # The upgrade head goes upstream without framing (dispatch drops it): a body
                # after it would be read there as the next request. Refused, as unframeable.
                self.answer(ex, BAD_REQUEST, result.request_id)
                return
            self._open_tunnel(ex)
            # A tunnel never shares a pooled connection.
            server.pool.connect_fresh(result.replica, ex, policy.connect_timeout_ms / 1000)  # type: ignore[arg-type]
            return
        if result.expect_continue and not ex.request_done and ex.body_bytes == 0:
            self.write(_CONTINUE)
        result.attempts = 1
        server.pool.acquire(result.replica, ex, policy.connect_timeout_ms / 1000)  # type: ignore[arg-type]

    def _upgrade_received(self, rest: bytes) -> None:
        """llhttp stops after a request that asks to upgrade: what follows is the new protocol,
        never HTTP. That request (the last one parsed) is answered by a tunnel once its upstream
        says 101 (:meth:`_open_tunnel`, when the route lets it upgrade), or else as an ordinary
        request, after which the connection closes."""
        ex = self.queue[-1] if self.queue else self.current
        self.parsing = None
        if self.tunnel is not ex:
            self._stop_parsing()
        if ex is None:
            self.close()  # the request was answered already
            return
        ex.request_done = True
        ex.keep_alive = False  # whatever the upstream answers, no more HTTP on this connection
        ex.tunnel_buf = [rest] if rest else []

    def _open_tunnel(self, ex: Exchange) -> None:
        """``ex`` is dispatched as an upgrade: hold the client's bytes until the upstream's 101."""
        plan = ex.plan
        assert plan is not None
        ex.request_done = True
        ex.keep_alive = False
        if ex.tunnel_buf is None:
            ex.tunnel_buf = []
        self.tunnel = ex
        self.tunnel_idle = plan.route.policy.read_timeout_ms / 1000
        self.tunnel_deadline = self.server.loop.time() + self.tunnel_idle
        self.unpause_for(_STOPPED)

    def enter_tunnel(self, ex: Exchange) -> None:
        """The upstream answered 101: from now on bytes flow both ways untouched."""
        self.tunnel = ex
        if ex.tunnel_buf:
            assert ex.conn is not None
            for data in ex.tunnel_buf:
                ex.conn.write(data)
        ex.tunnel_buf = None
        ex.buffered = 0
        self.unpause_for(ex)
        self.server.counters.answered(101)

    def finish(self, ex: Exchange) -> None:
        """The response to ``ex`` is complete: count it, then keep-alive, next, or close."""
        ex.advance(DONE)
        server = self.server
        server.outcomes.answered(
            ex.plan, self.peer, ex.method, ex.url, ex.t0, ex.status, ex.out_bytes, ex.timed_out, b""
        )
        if self.current is ex:
            self.current = None
        self._paused_by.discard(ex)
        if not ex.request_done and not self.closed:
            self._linger()
            return
        if not ex.keep_alive or self.closed:
            self._really_close()
            return
        self._resume_if_unpaused()
        if len(self.queue) <= _MAX_PIPELINE // 2:
            self.unpause_for(self)
        if self.queue:
            nxt = self.queue.popleft()
            self.current = nxt
            self._start(nxt)
        else:
            now = server.loop.time()
            self.deadline = now + server.keepalive_timeout
            held = self.buf
            if self.head_deadline == 0.0 and (
                self.parsing is not None or (held and held.strip(b"\r\n"))
            ):
                self.head_deadline = now + server.header_timeout  # a head begun meanwhile
            if self.draining:
                self.close()

    def answer(self, ex: Exchange, answer: Answer, request_id: bytes) -> None:
        """Send one of the gateway's own answers for ``ex`` (in pipeline order).

        With the request body still arriving, a cheap answer waits for its end (the body is
        read and dropped, up to 64 KiB) so the connection can be kept; a client waiting on
        ``Expect: 100-continue`` or an answer that closes anyway gets it at once."""
        if (
            not ex.request_done
            and not answer.close
            and not (ex.summary is not None and ex.summary[7] & HEAD_EXPECT_CONTINUE)
        ):
            ex.deferred = (answer, request_id)
            # The rest of the body must arrive in time, or the answer goes out with a close.
            self.deadline = self.server.time() + self.server.header_timeout
            return
        body = answer.body(request_id)
        ex.status = answer.status
        ex.advance(SENDING)
        if answer.close or not ex.request_done:
            ex.keep_alive = False  # an unread request body must not be parsed as a request
        close = not ex.keep_alive or self.draining
        head = (
            _STATUS_LINES[answer.status]
            + b"Content-Type: application/json\r\nContent-Length: %d\r\nX-Request-Id: %b\r\n"
            % (len(body), request_id)
            + (b"Connection: close\r\n\r\n" if close else b"\r\n")
        )
        ex.keep_alive = not close
        if ex.plan is not None:
            ex.out_bytes = answer_bytes(answer, len(body))
        self.write(head + (b"" if ex.method == b"HEAD" else body))
        self.finish(ex)

    def too_large(self, ex: Exchange) -> None:
        """The body grew past the limit while streaming."""
        if ex.conn is not None:
            conn, ex.conn = ex.conn, None
            conn.abort()
        self.parsing = None  # stop feeding it; the answer closes lingering (the body goes on)
        if ex.phase >= SENDING:
            self.close()
            return
        assert ex.plan is not None
        if self.current is ex:
            self.answer(ex, PAYLOAD_TOO_LARGE, ex.plan.request_id)
        else:
            self.close()

    def abort_response(self, ex: Exchange) -> None:
        """The upstream failed after the response head went out: the client can only learn
        it from the connection closing before the body is complete. For the deployment's
        health this is a gateway failure (502, or 504 after a read timeout), not a success."""
        ex.advance(ABORTED)
        self.server.outcomes.cut(ex.plan, ex.t0, ex.status, ex.out_bytes, ex.timed_out)
        self.close()

    def _fail_head(self, answer: Answer) -> None:
        """Bad bytes (a malformed request, or a head over the limits): nothing after them is
        ever parsed. The requests before are answered in order, then the bad one with
        ``answer`` (which closes). Bad bytes inside a body already being forwarded abort that
        upstream request, and the client gets ``answer`` unless its response had begun."""
        ex = self.parsing
        self.parsing = None
        self._stop_parsing()
        if ex is not None and ex is self.current and ex is not self.starting:
            # In the body of a request already dispatched (maybe already partly upstream).
            conn, ex.conn = ex.conn, None
            if conn is not None:
                conn.abort()  # the request is unfinished: a reset
            if ex.phase >= SENDING:
                self.close()
                return
            ex.deferred = None
            ex.request_done = True
            plan = ex.plan
            rid = plan.request_id if plan is not None else self.server.dispatcher.request_id(None)
            self.answer(ex, answer, rid)
            return
        if ex is None:
            ex = Exchange(self)
        queued = ex is self.current or ex in self.queue
        ex.verdict = answer
        ex.request_done = True
        ex.body_buf = None  # nothing of it is ever forwarded
        if queued:
            return  # answered in its turn (see _start)
        if self.current is None:
            self.current = ex
            self._start(ex)
        else:
            self.queue.append(ex)

    def _stop_parsing(self) -> None:
        self.stopped = True
        self.pause_for(_STOPPED)

    def _linger(self) -> None:
        """Close while the client may still be sending its request: FIN after the answer, then
        read and drop what still arrives until the client closes or the header timeout passes
        (nginx's lingering close). Closing with unread bytes would send a reset, which can
        destroy the answer in the client's receive buffer before the client read it."""
        self.closed = True
        self.parsing = None
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if not transport.can_write_eof():
            transport.close()
            return
        transport.write_eof()
        self._paused_by.clear()
        self._reading_paused = False
        transport.resume_reading()
        self.deadline = self.server.time() + self.server.header_timeout  # see sweep()

    # ------------------------------------------------------------ transport helpers

    def write(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)

    def pause_for(self, ex: object) -> None:
        if not self._paused_by and self.transport is not None:
            self._reading_paused = True
            self.transport.pause_reading()
        self._paused_by.add(ex)

    def unpause_for(self, ex: object) -> None:
        if ex in self._paused_by:
            self._paused_by.discard(ex)
            self._resume_if_unpaused()

    def _resume_if_unpaused(self) -> None:
        # Only when this connection paused reading: a call by name on the transport per
        # request otherwise (~600 instructions, 1.6 % of a proxied request).
        if (
            self._reading_paused
            and not self._paused_by
            and self.transport is not None
            and not self.closed
        ):
            self._reading_paused = False
            self.transport.resume_reading()

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.closed = True
            self.transport.close()

    def _really_close(self) -> None:
        self.closed = True
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def sweep(self, now: float) -> None:
        """Deadlines of this connection (called by the server's sweep)."""
        if self.closed:
            if self.deadline and self.deadline <= now and self.transport is not None:
                self.transport.close()  # lingered long enough
            return
        if self.tunnel is not None:
            if self.tunnel_deadline <= now:
                self.close()
            return
        if self.head_deadline and self.head_deadline <= now:
            self.close()  # slowloris: the head did not arrive in time
        elif self.deadline and self.deadline <= now:
            current = self.current
            if current is None:
                self.close()  # idle keep-alive
            elif current.deferred is not None:
                # A body we only read to drop stalled: answer now and close.
                answer, rid = current.deferred
                current.deferred = None
                current.request_done = True
                current.keep_alive = False
                self.parsing = None
                self.answer(current, answer, rid)

    def drain(self) -> None:
        self.draining = True
        if self.current is None and self.parsing is None:
            self.close()

    def __repr__(self) -> str:
        return f"ClientConnection({self.peer}, current={self.current!r}, queued={len(self.queue)})"


class NativeServer:
    """One worker's HTTP server: listening socket(s), connections, the periodic sweep."""

    def __init__(self, core: GatewayCore) -> None:
        config = core.config
        pool = core.pool
        self.loop = pool.loop
        # The loop's clock as a bound method: compiled, one call instead of a lookup by name
        # each time (3-4 times per request).
        self.time: Callable[[], float] = self.loop.time
        self.config = config
        self.table = core.table
        self.pool = pool
        self.counters = core.counters
        self.outcomes = core.outcomes
        self.dispatcher = Dispatcher(core.table, config)
        self.connections: set[ClientConnection] = set()
        self.high_water = config.high_water
        self.max_header_bytes = config.max_header_bytes
        self.max_headers = config.max_headers
        self.header_timeout = config.header_timeout
        self.keepalive_timeout = config.keepalive_timeout
        self.draining = False
        self._servers: list[asyncio.Server] = []
        self._sweep_handle: asyncio.TimerHandle | None = None

    async def listen(self, sock: socket.socket) -> None:
        server = await self.loop.create_server(
            lambda: ClientConnection(self), sock=sock, backlog=2048
        )
        self._servers.append(server)
        if self._sweep_handle is None:
            self._sweep_handle = self.loop.call_later(self.config.sweep_interval, self._sweep)

    def _sweep(self) -> None:
        now = self.loop.time()
        try:
            for conn in [c for c in self.connections if c.deadline or c.head_deadline or c.tunnel]:
                conn.sweep(now)
            self.pool.sweep(now)
        finally:
            self._sweep_handle = self.loop.call_later(self.config.sweep_interval, self._sweep)

    async def drain(self, timeout: float) -> None:
        """Stop accepting, let in-flight requests finish (up to ``timeout``), then close."""
        self.draining = True
        for server in self._servers:
            server.close()
        for conn in list(self.connections):
            conn.drain()
        deadline = self.loop.time() + timeout
        while self.connections and self.loop.time() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.transport.abort()
        for server in self._servers:
            with contextlib.suppress(Exception):
                await server.wait_closed()
        if self._sweep_handle is not None:
            self._sweep_handle.cancel()
            self._sweep_handle = None
