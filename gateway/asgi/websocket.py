"""The ``websocket`` scope: the gateway's WebSocket proxy and its own upstream protocol.

WebSocket: the ``websocket`` scope is proxied. The gateway connects fresh to the chosen replica
(its own connection, outside the pool: a tunnel never returns to it), sends an HTTP/1.1 upgrade
with its own ``Sec-WebSocket-Key`` (subprotocols forwarded, extensions not), and only after the
upstream's ``101`` accepts the client. Messages are pumped both ways with the frame codec in
:mod:`gateway.wsframes` (the gateway is the upstream's client: its frames are masked; pings from
the upstream are answered by the gateway). A refusal is passed on as an HTTP response when the
server supports the ``websocket.http.response`` extension, else as a close with code 1011. The
tunnel closes after ``policy.read_timeout_ms`` without a message either way.

"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Final, cast

import httptools

from gateway import wsframes
from gateway.asgi.messages import Receive, Scope, Send, Waiting, ws_reject, ws_reject_answer
from gateway.dispatch import Plan
from gateway.errors import (
    BAD_GATEWAY,
    BAD_GATEWAY_RESPONSE,
    GATEWAY_TIMEOUT,
    UPSTREAM_HEADER_TOO_LARGE,
    Answer,
    UpstreamError,
    UpstreamErrorKind,
)
from gateway.forwarding import after_failure
from gateway.headers import DROP_RESPONSE, R_FORWARD, response_header_class

if TYPE_CHECKING:
    from gateway.asgi.app import GatewayApp

log = logging.getLogger("turnout.gateway.asgi")

_WS_GUID: Final = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
# Client handshake headers the gateway replaces with its own upgrade request.
WS_REQUEST_DROP: Final = frozenset(
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


# =============================================================================== websocket


class WsUpstream(asyncio.Protocol):
    """The gateway's client connection to the upstream of one WebSocket.

    Its handshake response head is bounded as the pool bounds every other response head
    (``max_response_header_bytes``, counted as raw bytes before it is complete, and
    ``max_response_headers``); the handshake deadline is the proxy's (see ``WsProxy``)."""

    def __init__(self, proxy: WsProxy, head: bytes, max_size: int) -> None:
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


class WsProxy(Waiting):
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
        self.upstream: WsUpstream | None = None
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
                assert isinstance(proto, WsUpstream)
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

    def _factory(self, head: bytes) -> Callable[[], WsUpstream]:
        return lambda: WsUpstream(self, head, self.max_size)

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

    async def _refuse(self, scope: Scope, send: Send, upstream: WsUpstream) -> None:
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
        return f"WsProxy({self.url!r}, state={self.state})"
