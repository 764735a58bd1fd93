"""One request/response cycle of the native front-end: :class:`Exchange`, the upstream pool's
sink for that request (see :mod:`gateway.native` for the connection that owns it, and
:mod:`gateway.forwarding` for what happens after an upstream failure)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from gateway.chunked import Chunk
from gateway.dispatch import HeadSummary, ParsedHead, Plan
from gateway.errors import Answer, UpstreamError
from gateway.forwarding import Retry, after_abort, after_failure
from gateway.phase import DONE, HEAD, SENDING, TUNNEL, WAITING, phase_name, transition
from gateway.upstream import ResponseLike, Sink

if TYPE_CHECKING:
    from gateway.native import ClientConnection
    from gateway.upstream import UpstreamConnection

LAST_CHUNK: Final = b"0\r\n\r\n"
CRLF: Final = b"\r\n"
_DISCARD_LIMIT: Final = 64 * 1024  # body bytes we read and drop to keep a connection alive


class Exchange(Sink):
    """One request/response cycle; the upstream pool's sink for that request. Its response
    side moves through the phases of :mod:`gateway.phase` (``phase``, via :meth:`advance`)."""

    __slots__ = (
        "body_buf",
        "body_bytes",
        "buffered",
        "client",
        "conn",
        "deferred",
        "head",
        "keep_alive",
        "method",
        "out_bytes",
        "out_chunked",
        "pending",
        "phase",
        "plan",
        "request_done",
        "stale_retry",
        "status",
        "summary",
        "t0",
        "timed_out",
        "tunnel_buf",
        "url",
        "verdict",
        "version_10",
    )

    def __init__(self, client: ClientConnection) -> None:
        self.client = client
        self.url = b""  # the request target as received
        self.head: ParsedHead | None = None  # the parsed request head (None: a malformed one)
        self.summary: HeadSummary | None = None  # head.summary, read once
        self.method = b""
        self.version_10 = False
        self.keep_alive = True
        self.plan: Plan | None = None
        self.conn: UpstreamConnection | None = None
        self.body_buf: list[Chunk] | None = None  # request body not yet sent upstream
        self.buffered = 0
        self.body_bytes = 0
        self.request_done = False
        self.phase = WAITING  # gateway.phase: WAITING, HEAD, SENDING, TUNNEL, DONE, ABORTED
        self.out_chunked = False
        self.out_bytes = 0
        self.pending: bytes | None = None  # response head not yet written (joined with body)
        self.status = 0
        self.stale_retry = False
        self.timed_out = False
        self.tunnel_buf: list[bytes] | None = None
        self.deferred: tuple[Answer, bytes] | None = None  # answer waiting for the body's end
        self.verdict: Answer | None = None  # a malformed request: answered so in its turn
        self.t0 = 0.0

    def advance(self, to: int) -> None:
        """Move the response to phase ``to`` (checked against gateway.phase.TRANSITIONS when
        TURNOUT_CHECK_PHASES=1)."""
        self.phase = transition(self.phase, to)

    # ------------------------------------------------------------ request body (from client)

    def body_chunk(self, chunk: Chunk) -> None:
        self.body_bytes += len(chunk)
        if self.deferred is not None:
            # We already know the answer; drop the body, up to a point, to keep the connection.
            if self.body_bytes > _DISCARD_LIMIT:
                answer, rid = self.deferred
                self.deferred = None
                self.request_done = True
                self.keep_alive = False
                self.client.answer(self, answer, rid)
            return
        plan = self.plan
        if plan is not None and self.body_bytes > plan.route.policy.max_body_bytes:
            self.client.too_large(self)
            return
        conn = self.conn
        if conn is not None and self.body_buf is None:
            if plan is not None and plan.chunked:
                conn.write_chunk(chunk)
            else:
                conn.write_body(chunk)
            return
        if self.body_buf is None:
            self.body_buf = []
        self.body_buf.append(chunk)
        self.buffered += len(chunk)
        if self.buffered > self.client.server.high_water:
            self.client.pause_for(self)

    def body_end(self) -> None:
        self.request_done = True
        if self.deferred is not None:
            answer, rid = self.deferred
            self.deferred = None
            self.client.answer(self, answer, rid)
            return
        conn = self.conn
        plan = self.plan
        if (
            conn is not None
            and self.body_buf is None
            and plan is not None
            and plan.has_body
            and plan.upgrade is None  # an upgrade forwards no body (see upstream_ready)
        ):
            conn.end_request(LAST_CHUNK if plan.chunked else b"")

    # ------------------------------------------------------------ Sink: pool callbacks

    def upstream_ready(self, conn: UpstreamConnection) -> None:
        client = self.client
        plan = self.plan
        if client.closed or plan is None or client.current is not self:
            conn.abort()
            return
        replica = plan.replica
        assert replica is not None
        if not conn.reused:
            replica.record_success()
        self.conn = conn
        if client._writing_paused:
            conn.pause_reading()  # the client is not reading its earlier responses yet
        head_only = self.method == b"HEAD"
        has_body = plan.has_body and plan.upgrade is None  # an upgrade forwards no body
        conn.send(
            self,
            plan.request_head(replica),
            head_only=head_only,
            read_timeout=plan.route.policy.read_timeout_ms / 1000,
            complete=not has_body,
            upgrade=plan.upgrade,
        )
        buf = self.body_buf
        if buf is not None:
            self.body_buf = None
            self.buffered = 0
            if plan.chunked:
                for chunk in buf:
                    conn.write_chunk(chunk)
            else:
                for chunk in buf:
                    conn.write(chunk)
            client.unpause_for(self)
        if self.request_done and has_body:
            conn.end_request(LAST_CHUNK if plan.chunked else b"")

    def upstream_failed(self, error: UpstreamError) -> None:
        self.conn = None
        client = self.client
        plan = self.plan
        if client.closed or plan is None or client.current is not self:
            return
        server = client.server
        verdict = after_failure(
            plan,
            error,
            now=server.loop.time(),
            counters=server.counters,
            started=self.phase >= SENDING,
            replayable=self._can_replay(),
            stale_retried=self.stale_retry,
        )
        if isinstance(verdict, Retry):
            self.stale_retry = self.stale_retry or verdict.fresh
            verdict.send(server.pool, self, plan)
        elif isinstance(verdict, Answer):
            self.timed_out = self.timed_out or error.timed_out
            client.answer(self, verdict, plan.request_id)
        else:
            client.abort_response(self)

    def _can_replay(self) -> bool:
        """Only a request whose body (if any) is still entirely in hand can be sent again."""
        plan = self.plan
        assert plan is not None
        return plan.upgrade is None and (not plan.has_body or self.body_bytes == self.buffered)

    def response_head(
        self,
        status: int,
        reason: bytes,
        head: ResponseLike,
        content_length: bytes | None,
        body_expected: bool,
    ) -> None:
        client = self.client
        plan = self.plan
        assert plan is not None
        self.status = status
        framing = b""
        conn = b""
        if status == 101:
            pass
        elif not body_expected:
            if content_length is not None:
                framing = b"Content-Length: " + content_length + b"\r\n"
        elif content_length is not None:
            framing = b"Content-Length: " + content_length + b"\r\n"
        elif not self.version_10:
            framing = b"Transfer-Encoding: chunked\r\n"
            self.out_chunked = True
        else:
            self.keep_alive = False  # HTTP/1.0 client: the body ends when we close
        if status != 101:
            if not self.request_done:
                # Answered before the request ended: the rest of it is never forwarded, and the
                # connection closes after this response (lingering, see finish()).
                self.keep_alive = False
            if not self.keep_alive or client.draining:
                self.keep_alive = False
                conn = b"Connection: close\r\n"
            elif self.version_10:
                conn = b"Connection: keep-alive\r\n"
        # one allocation for the whole head (compiled: the format is one build)
        out = b"HTTP/1.1 %d %b\r\n%bX-Request-Id: %b\r\n%b%b\r\n" % (
            status,
            reason,
            head.block(),
            plan.request_id,
            framing,
            conn,
        )
        if status == 101:
            self.advance(TUNNEL)
            client.write(out)
            client.enter_tunnel(self)
        else:
            # Held back until the first body bytes or the end of this read from the upstream,
            # so a small response leaves in one write (one syscall) instead of two.
            self.pending = out
            self.advance(HEAD)

    def response_body(self, data: Chunk) -> None:
        self.out_bytes += len(data)
        transport = self.client.transport
        if transport is None:
            return
        pending = self.pending
        if pending is not None:
            self.pending = None
            self.advance(SENDING)
            if self.out_chunked:
                transport.writelines((pending, b"%x\r\n" % len(data), data, CRLF))
            else:
                transport.writelines((pending, data))
        elif self.out_chunked:
            transport.writelines((b"%x\r\n" % len(data), data, CRLF))
        else:
            transport.write(data)

    def response_flush(self) -> None:
        pending = self.pending
        if pending is not None:
            self.pending = None
            self.advance(SENDING)
            self.client.write(pending)

    def response_end(self) -> None:
        self.conn = None
        client = self.client
        if client.tunnel is self and self.status == 101:
            self.advance(DONE)
            client.close()
            return
        pending = self.pending
        if pending is not None:
            self.pending = None
            self.advance(SENDING)
            client.write(pending + LAST_CHUNK if self.out_chunked else pending)
        elif self.out_chunked:
            client.write(LAST_CHUNK)
        client.finish(self)

    def response_aborted(self, error: UpstreamError) -> None:
        self.conn = None
        self.timed_out = self.timed_out or error.timed_out
        if self.phase == HEAD:  # the head never left: a clean answer is still possible
            self.pending = None
            self.out_chunked = False
            self.advance(WAITING)
        verdict = after_abort(error, started=self.phase >= SENDING)
        if isinstance(verdict, Answer):
            plan = self.plan
            assert plan is not None
            self.client.answer(self, verdict, plan.request_id)
        else:
            self.client.abort_response(self)

    def upstream_pause_writing(self) -> None:
        self.client.pause_for(self)

    def upstream_resume_writing(self) -> None:
        self.client.unpause_for(self)

    def tunnel_data(self, data: bytes) -> None:
        client = self.client
        client.tunnel_deadline = client.server.loop.time() + client.tunnel_idle
        if client.transport is not None:
            client.transport.write(data)

    def __repr__(self) -> str:
        return f"Exchange({self.method!r} {self.url!r}, status={self.status}, {phase_name(self.phase)})"
