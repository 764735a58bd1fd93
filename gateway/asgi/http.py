"""One proxied HTTP request in an ``http`` scope.

Theory of operation
-------------------
No Starlette, no per-request dicts beyond the ASGI messages themselves. One
:class:`HttpExchange` per request is the upstream pool's *sink* (see :mod:`gateway.pool`, and
:class:`gateway.exchange.Exchange`, whose rules it follows): the pool calls it back, it records
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
* Retries follow :meth:`gateway.exchange.Exchange.upstream_failed`: a connect failure moves to
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

"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import TYPE_CHECKING, Final

from gateway.asgi.messages import CONNECTION_CLOSE, Message, Receive, Send, Waiting, send_answer
from gateway.chunked import Chunk
from gateway.dispatch import Plan
from gateway.errors import (
    PAYLOAD_TOO_LARGE,
    Answer,
    UpstreamError,
    UpstreamErrorKind,
)
from gateway.forwarding import Retry, after_abort, after_failure, answer_bytes
from gateway.phase import ABORTED, DONE, HEAD, SENDING, WAITING, phase_name, transition
from gateway.upstream import ResponseLike, Sink

if TYPE_CHECKING:
    from gateway.asgi.app import GatewayApp
    from gateway.upstream import UpstreamConnection

log = logging.getLogger("turnout.gateway.asgi")

_LAST_CHUNK: Final = b"0\r\n\r\n"


class HttpExchange(Waiting, Sink):
    """One proxied HTTP request: the pool's sink, plus the two coroutines that drive it. Its
    response side moves through the phases of :mod:`gateway.phase` (``phase``, via
    :meth:`advance`), as the native exchange's does."""

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
        "gone",
        "headers",
        "method",
        "peer",
        "pending",
        "pending_bytes",
        "phase",
        "plan",
        "pump_waiter",
        "read_paused",
        "stale_retry",
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
        # gateway.phase: HEAD = the head in hand, SENDING = http.response.start sent (or being
        # sent), DONE = finished and counted, ABORTED = cut, or the client went away
        self.phase = WAITING
        self.timed_out = False
        self.stale_retry = False
        self.gone = False  # the client disconnected
        self.waiter = None
        self.pump_waiter: asyncio.Future[None] | None = None

    def advance(self, to: int) -> None:
        """Move the response to phase ``to`` (checked against gateway.phase.TRANSITIONS when
        TURNOUT_CHECK_PHASES=1)."""
        self.phase = transition(self.phase, to)

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
            if self.phase < DONE:
                self.advance(ABORTED)  # cut mid-response, or the client went away
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
        self.advance(SENDING)
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
        self.advance(DONE)
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
        self.advance(SENDING)
        close = self.plan.reframed or not self.body_done
        n = await send_answer(
            send, answer, self.plan.request_id, head_only=self.method == b"HEAD", close=close
        )
        self.advance(DONE)
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
        if self.body_done or self.phase >= DONE or self.gone or self.answer is not None:
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
        if self.answer is not None or self.ended or self.error is not None or self.phase >= DONE:
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
        if self.phase < SENDING:
            self.answer = PAYLOAD_TOO_LARGE
            self.headers = None
            self.chunks.clear()
            if self.phase == HEAD:
                self.advance(WAITING)
        else:
            self.error = UpstreamError(UpstreamErrorKind.CLOSED, "request body too large")
        self._wake()

    def _client_gone(self) -> None:
        if self.phase >= DONE:
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
        if self.phase >= DONE or self.gone or self.answer is not None:
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
        if self.phase >= DONE or self.gone or self.answer is not None:
            return
        app = self.app
        plan = self.plan
        verdict = after_failure(
            plan,
            error,
            now=app.loop.time(),
            counters=app.counters,
            started=self.phase >= SENDING,
            replayable=self._can_replay(),
            stale_retried=self.stale_retry,
        )
        if isinstance(verdict, Retry):
            self.stale_retry = self.stale_retry or verdict.fresh
            verdict.send(app.pool, self, plan)
            return
        if isinstance(verdict, Answer):
            self.timed_out = self.timed_out or error.timed_out
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
        head: ResponseLike,
        content_length: bytes | None,
        body_expected: bool,
    ) -> None:
        # Never a 101: the pool refuses one to a request that asked for no upgrade (and an
        # http scope never asks).
        out = [(name.lower(), value) for name, value in head.kept]
        if content_length is not None and (body_expected or self.method == b"HEAD"):
            out.append((b"content-length", content_length))
        out.append((b"x-request-id", self.plan.request_id))
        if self.plan.reframed:
            out.append(CONNECTION_CLOSE)
        self.status = status
        self.headers = out
        self.advance(HEAD)
        self._wake()

    def response_body(self, data: Chunk) -> None:
        self.chunks.append(data if type(data) is bytes else bytes(data))  # ASGI bodies are bytes
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
        self.timed_out = self.timed_out or error.timed_out
        verdict = after_abort(error, started=self.phase >= SENDING)
        if isinstance(verdict, Answer):
            self.answer = verdict
            self.headers = None
            self.chunks.clear()
            if self.phase == HEAD:
                self.advance(WAITING)
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
        return f"HttpExchange({self.method!r} {self.url!r}, status={self.status}, {phase_name(self.phase)})"
