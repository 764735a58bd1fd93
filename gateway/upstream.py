"""One keep-alive HTTP/1.1 connection to an upstream origin (``asyncio.Protocol`` +
``httptools.HttpResponseParser``), and :class:`Sink`, what it calls back. The pool that hands
these connections out and sweeps their deadlines is :mod:`gateway.pool`.

Connection states (:class:`ConnState`), transitions only in this module and :mod:`gateway.pool`::

    CONNECTING -> IDLE (handed out at once as ACTIVE) -> ACTIVE -> IDLE -> ... -> CLOSED
                                               ACTIVE -> TUNNEL (after 101) -> CLOSED

An idle pooled socket that the server closed is noticed by ``connection_lost`` and dropped; a
request that fails on a *reused* connection before any response byte is reported with
``reused=True`` so the caller can retry once on a fresh connection. A response the client
abandons closes its upstream connection (``abort``) instead of returning it to the pool.

A connection goes back to the pool only when the exchange on it ended cleanly: the whole
request was written (``send(complete=True)`` or :meth:`UpstreamConnection.end_request`) *and*
the response ended by its framing with nothing after it. An origin that answers before reading
the body (a 401 to an upload) leaves the rest of that body owed on the connection; reusing it
would make the origin read the next request — another client's — as that body. Such a
connection is dropped, and dropping a connection whose request is still open resets it (RST):
the origin can never take a truncated request as complete.

What the sink is told, exactly once per request: a connection that the pool drops itself
(invalid response, limits, deadlines, ``abort``) stops reporting to its sink first, so the
``connection_lost`` that follows reports nothing more.

Response heads are bounded (``max_response_header_bytes``: every byte before the final head,
interim 1xx heads included; ``max_response_headers`` per head): the raw bytes fed while the
head is incomplete are counted *before* httptools accumulates them, so a head that never ends
costs at most the limit plus one read. The final head must arrive within
``response_header_timeout`` (never longer than the route's read timeout) of the request being
sent — or of the first response byte, for an early answer — enforced by the sweep. A ``101`` is
honoured only for a request that asked to switch (``send(upgrade=...)``) to one of the named
protocols, with ``Connection: upgrade``; a transfer coding other than ``chunked`` cannot be
passed on faithfully and is refused, as nginx does. Refusals are reported as
``response_aborted`` with the :class:`~gateway.errors.UpstreamError` kind that
:func:`gateway.forwarding.upstream_answer` maps to the client's answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import socket
import struct
from abc import abstractmethod
from typing import TYPE_CHECKING, Final, cast

import httptools
from mypy_extensions import trait

from gateway.errors import UpstreamError
from gateway.headers import (
    PLAIN_CONNECTION,
    R_CONNECTION,
    R_CONTENT_LENGTH,
    R_FORWARD,
    R_TRANSFER_ENCODING,
    R_UPGRADE,
    response_header_class,
)

if TYPE_CHECKING:
    from gateway.pool import UpstreamPool

Key = tuple[str, int]


class _Trailing(Exception):
    """Raised from a parser callback: bytes followed a complete response."""


class _Refused(Exception):
    """Raised from a parser callback: a response the gateway will not pass on."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


# SO_LINGER on, zero seconds: close() sends RST instead of FIN.
_LINGER_RESET: Final = struct.pack("ii", 1, 0)
# Status line bytes besides the reason: "HTTP/1.1 200 " + CRLF (and the head's final CRLF).
_STATUS_LINE_BYTES: Final = 17


def _head_size(reason: bytes, headers: list[tuple[bytes, bytes]]) -> int:
    """A response head's size on the wire (as sent, without obs-fold or extra whitespace)."""
    n = _STATUS_LINE_BYTES + len(reason)
    for name, value in headers:
        n += len(name) + len(value) + 4
    return n


class ConnState(enum.IntEnum):
    CONNECTING = 0
    IDLE = 1
    ACTIVE = 2
    TUNNEL = 3
    CLOSED = 4


@trait
class Sink:
    """What the pool and its connections call back. The front-ends' exchanges inherit it.

    A base class (a mypyc trait), not a ``typing.Protocol``: compiled, the pool's calls into the
    sink — four or five per request — are vtable calls instead of method lookups by name.
    Every method is abstract: mypy rejects an exchange class that leaves one out."""

    __slots__ = ()

    @abstractmethod
    def upstream_ready(self, conn: UpstreamConnection) -> None:
        """A connection is ready for this request: write the request through ``conn``."""

    @abstractmethod
    def upstream_failed(self, error: UpstreamError) -> None:
        """No connection could be had (connect error, timeout, pool full, shutdown)."""

    @abstractmethod
    def response_head(
        self,
        status: int,
        reason: bytes,
        headers: list[tuple[bytes, bytes]],
        content_length: bytes | None,
        body_expected: bool,
    ) -> None:
        """The response head, hop-by-hop headers removed; framing passed separately."""

    @abstractmethod
    def response_body(self, data: bytes) -> None:
        """One chunk of the response body, as it arrived."""

    @abstractmethod
    def response_flush(self) -> None:
        """The end of one read from the upstream: send what is held back."""

    @abstractmethod
    def response_end(self) -> None:
        """The response is complete."""

    @abstractmethod
    def response_aborted(self, error: UpstreamError) -> None:
        """The response broke off (reset, timeout, invalid bytes)."""

    @abstractmethod
    def upstream_pause_writing(self) -> None:
        """The upstream is not reading: stop sending it request body."""

    @abstractmethod
    def upstream_resume_writing(self) -> None:
        """The upstream reads again."""

    @abstractmethod
    def tunnel_data(self, data: bytes) -> None:
        """Bytes from the upstream after a 101: pass them on untouched."""


class _Spent:
    """The callbacks of :data:`_SPENT_PARSER`: a closed connection parses nothing."""


# What a closed connection's ``parser`` becomes (data_received never feeds it: not ACTIVE).
_SPENT_PARSER: Final = httptools.HttpResponseParser(_Spent())


class UpstreamConnection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection to one upstream origin."""

    __slots__ = (
        "_chunked",
        "_close_delimited",
        "_ended",
        "_head_only",
        "_head_open",
        "_head_seen",
        "_headers",
        "_informational",
        "_interim_bytes",
        "_length",
        "_reason",
        "_upgrade",
        "deadline",
        "head_deadline",
        "idle_since",
        "key",
        "parser",
        "paused",
        "pool",
        "read_timeout",
        "request_open",
        "requests",
        "responded",
        "sink",
        "state",
        "transport",
    )

    def __init__(self, pool: UpstreamPool, key: Key) -> None:
        self.pool = pool
        self.key = key
        self.state = ConnState.CONNECTING
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.sink: Sink | None = None
        self.requests = 0  # requests served; > 0 means this connection is being reused
        self.responded = False  # any byte of the current response received
        self.deadline = 0.0  # read-idle deadline while ACTIVE (checked by the sweep)
        self.head_deadline = 0.0  # the final response head is due by then (0 = not yet armed)
        self.request_open = False  # request bytes are still to be written
        self.read_timeout = 30.0
        self.idle_since = 0.0
        self.paused = False  # reading paused for a slow client
        self._headers: list[tuple[bytes, bytes]] = []
        self._reason = b""
        self._head_only = False
        self._informational = False
        self._close_delimited = False
        self._chunked = False
        self._length: bytes | None = None
        self._upgrade: bytes | None = None  # the protocols the request asked to switch to
        self._head_open = False  # the final response head is not complete yet
        self._head_seen = 0  # bytes read while the head was incomplete (all of them head bytes)
        self._interim_bytes = 0  # sizes of the interim (1xx) heads of this response
        # Set when a response completed inside the current feed_data(): (sink, keep_alive).
        # The connection is released only after feed_data() returns, and only if nothing
        # followed the response — else stray bytes would be parsed as the NEXT request's
        # response, possibly another client's (or tenant's).
        self._ended: tuple[Sink | None, bool] | None = None

    # -------------------------------------------------------------- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.transport.set_write_buffer_limits(high=self.pool.high_water)

    def data_received(self, data: bytes) -> None:
        if self.state is ConnState.TUNNEL:
            if self.sink is not None:
                self.sink.tunnel_data(data)
            return
        if self.state is not ConnState.ACTIVE:
            # An idle keep-alive connection got bytes nobody asked for: unusable.
            self.close()
            return
        self.responded = True
        now = self.pool.now()
        self.deadline = now + self.read_timeout
        if self._head_open:
            # Counted before httptools accumulates them: every byte before the final head is
            # head (interim 1xx heads included), so this bounds a head that never ends.
            self._head_seen += len(data)
            if self.head_deadline == 0.0:  # an answer while the request is still being sent
                self._arm_head_deadline(now)
        trailing = False
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            rest = data[exc.args[0] :] if exc.args else b""
            self._enter_tunnel(rest)
            return
        except httptools.HttpParserError as exc:
            if self._ended is None:
                kind, message = _refusal(exc)  # no exception kept in this frame: a cycle
                self._refuse(kind, message)
                return
            trailing = True  # bytes after a complete response (see on_message_begin)
        ended = self._ended
        if ended is None:
            if self._head_open and self._head_seen > self.pool.max_head_bytes:
                self._refuse(
                    "head_too_large",
                    f"upstream response head over {self.pool.max_head_bytes} bytes",
                )
                return
            sink = self.sink
            if sink is not None:
                sink.response_flush()
            return
        self._ended = None
        done_sink, keep_alive = ended
        if keep_alive and not trailing and not self.request_open and self.state is ConnState.ACTIVE:
            # A pooled socket must be readable, or a server-side close would go unnoticed.
            self.resume_reading()
            self.state = ConnState.IDLE
            self.idle_since = self.pool.now()
            self.pool._release(self)
        else:
            self._drop()
        if done_sink is not None:
            done_sink.response_end()

    def connection_lost(self, exc: Exception | None) -> None:
        # The parser and this protocol refer to each other: a cycle only the (rarely run, see
        # gateway.worker) cyclic GC would free, with whatever the parser accumulated — up to a
        # head limit's worth per connection. Replacing the parser frees both at once.
        self.parser = _SPENT_PARSER
        state = self.state
        self.state = ConnState.CLOSED
        self.pool._forget(self, state)
        sink, self.sink = self.sink, None
        if sink is None or state is ConnState.IDLE or state is ConnState.CLOSED:
            return  # idle, or dropped by us: whoever dropped it told the sink already
        if state is ConnState.TUNNEL:
            sink.response_end()
            return
        if not self.responded:
            kind = "reset" if exc is not None else "closed"
            sink.upstream_failed(
                UpstreamError(
                    kind,
                    f"upstream closed the connection ({exc or 'EOF'})",
                    sent=True,
                    reused=self.requests > 1,
                )
            )
        elif self._close_delimited and exc is None:
            sink.response_end()  # a response delimited by close ends here, normally
        else:
            sink.response_aborted(UpstreamError("reset", "upstream closed mid-response"))

    def pause_writing(self) -> None:
        if self.sink is not None:
            self.sink.upstream_pause_writing()

    def resume_writing(self) -> None:
        if self.sink is not None:
            self.sink.upstream_resume_writing()

    # -------------------------------------------------------------- httptools callbacks

    def on_message_begin(self) -> None:
        if self._ended is not None:
            raise _Trailing  # a second response nobody asked for: never hand it on

    def on_status(self, status: bytes) -> None:
        self._reason = status

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        headers, self._headers = self._headers, []
        pool = self.pool
        if len(headers) > pool.max_headers:
            raise _Refused(
                "head_too_large", f"upstream response head has over {pool.max_headers} headers"
            )
        if 100 <= status < 200 and status != 101:
            self._informational = True  # 100/102/103: swallowed, the final response follows
            self._interim_bytes += _head_size(self._reason, headers)
            return
        self._informational = False
        self._head_open = False
        self.head_deadline = 0.0
        # _head_seen counts whole reads; only when they exceed the limit is the exact size of
        # the head (and of the interim ones before it) worth computing.
        if (
            self._head_seen > pool.max_head_bytes
            and self._interim_bytes + _head_size(self._reason, headers) > pool.max_head_bytes
        ):
            raise _Refused(
                "head_too_large", f"upstream response head over {pool.max_head_bytes} bytes"
            )
        kept: list[tuple[bytes, bytes]] = []
        length: bytes | None = None
        te: bytes | None = None
        conn_tokens: list[bytes] | None = None
        upgrade: bytes | None = None
        for name, value in headers:
            code = response_header_class(name)
            if code == R_FORWARD:
                kept.append((name, value))
            elif code == R_CONTENT_LENGTH:
                length = value
            elif code == R_TRANSFER_ENCODING:
                te = value if te is None else te + b", " + value
            elif code == R_CONNECTION:
                if value not in PLAIN_CONNECTION:  # the usual values nominate nothing
                    conn_tokens = [t.strip().lower() for t in value.split(b",")]
            elif code == R_UPGRADE:
                upgrade = value
            # R_DROP: other hop-by-hop headers and X-Request-Id (the gateway sets its own)
        if conn_tokens:
            nominated = {t for t in conn_tokens if t not in (b"close", b"keep-alive", b"upgrade")}
            if nominated:
                kept = [(n, v) for n, v in kept if n.lower() not in nominated]
        if status == 101:
            self._check_upgrade(upgrade, conn_tokens)
            assert upgrade is not None
            kept.append((b"Connection", b"upgrade"))
            kept.append((b"Upgrade", upgrade))
        body_expected = not (self._head_only or status in (204, 304) or status == 101)
        chunked = te is not None
        if te is not None and body_expected and te != b"chunked" and not _only_chunked(te):
            # RFC 9112 §6.3: the body of such a response ends at close, still in a coding the
            # client never asked for (TE is hop-by-hop and not forwarded). nginx refuses too.
            raise _Refused("protocol", f"upstream sent unsupported Transfer-Encoding {te!r}")
        self._chunked = chunked
        self._length = None if chunked else length
        self._close_delimited = body_expected and not chunked and length is None
        sink = self.sink
        if sink is not None:
            sink.response_head(status, self._reason, kept, self._length, body_expected)
        if self._head_only and self.state is ConnState.ACTIVE:
            # llhttp cannot be told a response answers HEAD: finish here, fresh parser next.
            keep = self.parser.should_keep_alive()
            self.parser = httptools.HttpResponseParser(self)
            self._finish(keep)

    def on_body(self, body: bytes) -> None:
        if self._ended is not None:
            raise _Trailing  # e.g. a body after a HEAD response
        if self.sink is not None:
            self.sink.response_body(body)

    def _check_upgrade(self, upgrade: bytes | None, conn_tokens: list[bytes] | None) -> None:
        """A 101 must answer a request that asked to switch, name only protocols it offered,
        and carry ``Connection: upgrade`` (RFC 9110 §7.8); anything else would turn the client
        connection into a raw tunnel past routing and header rules."""
        offered = self._upgrade
        if offered is None:
            raise _Refused("upgrade", "upstream answered 101 to a request that asked for none")
        if upgrade is None or conn_tokens is None or b"upgrade" not in conn_tokens:
            raise _Refused("upgrade", "upstream 101 without Upgrade and Connection: upgrade")
        wanted = {t.strip().lower() for t in offered.split(b",")}
        for token in upgrade.split(b","):
            if token.strip().lower() not in wanted:
                raise _Refused("upgrade", f"upstream switched to {upgrade!r}, not {offered!r}")

    def on_message_complete(self) -> None:
        if self._informational:
            self._informational = False
            return
        if self.parser.get_status_code() == 101 and self.parser.should_upgrade():
            return  # llhttp completes a 101 before raising HttpParserUpgrade: a tunnel follows
        if self.state is ConnState.ACTIVE and not self._head_only and self._ended is None:
            self._finish(self.parser.should_keep_alive())

    # -------------------------------------------------------------- used by sinks

    def send(
        self,
        sink: Sink,
        head: bytes,
        *,
        head_only: bool,
        read_timeout: float,
        complete: bool = True,
        upgrade: bytes | None = None,
    ) -> None:
        """Start a request: bind ``sink``, write the request head. ``complete=False``: a body
        follows, and the sink calls :meth:`end_request` after its last byte. ``upgrade``: the
        protocols the request asks to switch to (a 101 naming any other is refused)."""
        assert self.state is ConnState.ACTIVE and self.transport is not None
        self.sink = sink
        self.responded = False
        self._head_only = head_only
        self._upgrade = upgrade
        self._head_open = True
        self._head_seen = 0
        self._interim_bytes = 0
        self.read_timeout = read_timeout
        now = self.pool.now()
        self.deadline = now + read_timeout
        self.request_open = not complete
        if complete:
            self._arm_head_deadline(now)
        else:
            self.head_deadline = 0.0
        self.requests += 1
        self.transport.write(head)

    def end_request(self, data: bytes = b"") -> None:
        """The request's last bytes (``data``: e.g. the last chunk) are written: from now on the
        connection may be reused once the response ends, and the response head is due."""
        if self.transport is None or self.state is ConnState.CLOSED:
            return
        if data:
            self.transport.write(data)
        if self.request_open:
            self.request_open = False
            if self._head_open and self.head_deadline == 0.0:
                self._arm_head_deadline(self.pool.now())

    def _arm_head_deadline(self, now: float) -> None:
        timeout = self.pool.head_timeout
        if self.read_timeout < timeout:
            timeout = self.read_timeout
        self.head_deadline = now + timeout

    def write(self, data: bytes) -> None:
        if self.transport is not None and self.state is not ConnState.CLOSED:
            self.transport.write(data)

    def write_body(self, data: bytes) -> None:
        """Request body bytes: an upload in progress keeps the read-idle deadline alive."""
        if self.transport is not None and self.state is not ConnState.CLOSED:
            self.deadline = self.pool.now() + self.read_timeout
            self.transport.write(data)

    def pause_reading(self) -> None:
        if self.transport is not None and self.state is not ConnState.CLOSED and not self.paused:
            self.paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None and self.state is not ConnState.CLOSED and self.paused:
            self.paused = False
            self.transport.resume_reading()

    def abort(self) -> None:
        """The client went away (or the request failed): never reuse this connection."""
        self.sink = None
        self._drop()

    def close(self) -> None:
        self.sink = None
        self._drop()

    @property
    def reused(self) -> bool:
        return self.requests > 1

    def _finish(self, keep_alive: bool) -> None:
        """The response is complete (called from inside feed_data): data_received releases
        or drops the connection once the parser has consumed the whole read."""
        self._ended = (self.sink, keep_alive)
        self.sink = None

    def _enter_tunnel(self, rest: bytes) -> None:
        self.state = ConnState.TUNNEL
        self.pool._detach(self)
        if rest and self.sink is not None:
            self.sink.tunnel_data(rest)

    def _refuse(self, kind: str, message: str) -> None:
        """Drop the connection over an invalid (or refused) response and tell the sink, once."""
        sink, self.sink = self.sink, None
        self._drop()
        if sink is not None:
            sink.response_aborted(UpstreamError(kind, message))

    def _drop(self) -> None:
        if self.state is not ConnState.CLOSED:
            state = self.state
            self.state = ConnState.CLOSED
            self.pool._forget(self, state)
        transport = self.transport
        if transport is not None:
            if self.request_open:
                # The origin holds an unfinished request: reset, so that it can never take
                # what it got for the whole request (a FIN after a chunk boundary could pass).
                sock = transport.get_extra_info("socket")
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
            transport.abort()

    def __repr__(self) -> str:
        return f"UpstreamConnection({self.key[0]}:{self.key[1]}, {self.state.name}, requests={self.requests})"


def _refusal(exc: httptools.HttpParserError) -> tuple[str, str]:
    """The ``UpstreamError`` kind and message for a parse that failed."""
    refused = exc.__context__ or exc.__cause__
    if isinstance(refused, _Refused):
        return refused.kind, str(refused)
    return "protocol", f"invalid response: {exc}"


def _only_chunked(te: bytes) -> bool:
    """``Transfer-Encoding`` lists ``chunked`` and no other coding (any case and spacing)."""
    return [c.strip().lower() for c in te.split(b",")] == [b"chunked"]
