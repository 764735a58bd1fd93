"""One keep-alive HTTP/1.1 connection to an upstream origin (``asyncio.Protocol`` +
:func:`gateway.head.parse_response`, bodies by their framing with :mod:`gateway.chunked` for
chunked ones), and :class:`Sink`, what it calls back. The pool that hands
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
interim 1xx heads included; ``max_response_headers`` per head): the bytes received while the
head is incomplete are held and parsed again from the start with each read, and refused once
they exceed the limit, so a head that never ends costs at most the limit plus one read. The final head must arrive within
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
from typing import TYPE_CHECKING, Final, Protocol, cast

from mypy_extensions import trait

from gateway.chunked import BIG_RUN, Chunk, ChunkedDecoder, ChunkError
from gateway.errors import UpstreamError
from gateway.head import parse_response
from gateway.headers import (
    RESP_BODY,
    RESP_CHUNKED,
    RESP_CLOSE_DELIMITED,
    RESP_KEEP_ALIVE,
    RESP_UPGRADE,
)

if TYPE_CHECKING:
    from gateway.pool import UpstreamPool

Key = tuple[str, int]


class ResponseLike(Protocol):
    """What a sink reads of a parsed response head (:class:`gateway.head.ResponseHead`, or its
    compiled twin)."""

    @property
    def kept(self) -> list[tuple[bytes, bytes]]:
        """The lines that go to the client: hop-by-hop and nominated ones dropped."""

    def block(self) -> bytes:
        """The same lines as ``name: value`` CRLF, joined."""


# SO_LINGER on, zero seconds: close() sends RST instead of FIN.
_LINGER_RESET: Final = struct.pack("ii", 1, 0)
# The class of parse_response's refusals, whichever implementation runs.
_REFUSED: Final = type(parse_response(b"\x00", 64, 4, False))


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
        head: ResponseLike,
        content_length: bytes | None,
        body_expected: bool,
    ) -> None:
        """The response head, hop-by-hop headers removed; framing passed separately."""

    @abstractmethod
    def response_body(self, data: Chunk) -> None:
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


class UpstreamConnection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection to one upstream origin."""

    __slots__ = (
        "_buf",
        "_chunks",
        "_close_delimited",
        "_head_only",
        "_head_open",
        "_keep_alive",
        "_left",
        "_parsed",
        "_upgrade",
        "deadline",
        "head_deadline",
        "idle_since",
        "key",
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
        self.sink: Sink | None = None
        self.requests = 0  # requests served; > 0 means this connection is being reused
        self.responded = False  # any byte of the current response received
        self.deadline = 0.0  # read-idle deadline while ACTIVE (checked by the sweep)
        self.head_deadline = 0.0  # the final response head is due by then (0 = not yet armed)
        self.request_open = False  # request bytes are still to be written
        self.read_timeout = 30.0
        self.idle_since = 0.0
        self.paused = False  # reading paused for a slow client
        self._buf = b""  # every byte received for the current response until its final head
        self._parsed = 0  # len(_buf) when it was last parsed
        self._head_only = False
        self._close_delimited = False
        self._keep_alive = False  # llhttp's should_keep_alive() for the current response
        self._left = 0  # Content-Length bytes of the body still to come
        self._chunks: ChunkedDecoder | None = None  # the chunked body being read
        self._upgrade: bytes | None = None  # the protocols the request asked to switch to
        self._head_open = False  # the final response head is not complete yet

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
        pool = self.pool
        now = pool.now()
        self.deadline = now + self.read_timeout
        if not self._head_open:
            self._body(data, 0)
            return
        if self.head_deadline == 0.0:  # an answer while the request is still being sent
            self._arm_head_deadline(now)
        # Every byte before the final head is head (interim 1xx heads included): parsed again
        # from the start while incomplete, and bounded by the limit (parse_response refuses).
        held = self._buf
        if held:
            buf = held + data
            if (
                len(buf) < 2 * self._parsed
                and len(buf) <= pool.max_head_bytes
                and (held[-2:] + data).find(b"\n\r\n") < 0
                and data.find(b"\n\n") < 0
            ):
                # No head can have ended in this read (no empty line): parse again only once
                # the bytes held have doubled, so a head trickled in line by line costs O(n),
                # not one whole parse per line (a 64 KiB head of 13 000 short lines: ~1 000
                # reparses before).
                self._buf = buf
                return
        else:
            buf = data
        head = parse_response(
            buf, pool.max_head_bytes, pool.max_headers, self._head_only, self._upgrade
        )
        if head is None:
            self._buf = buf
            self._parsed = len(buf)
            return
        self._buf = b""
        if type(head) is _REFUSED:
            self._refuse(head.kind, head.message)  # type: ignore[union-attr]
            return
        status, reason, end, length, flags = head.summary  # type: ignore[union-attr]
        self._head_open = False
        self.head_deadline = 0.0
        body_expected = bool(flags & RESP_BODY)
        self._close_delimited = bool(flags & RESP_CLOSE_DELIMITED)
        self._keep_alive = bool(flags & RESP_KEEP_ALIVE)
        sink = self.sink
        if sink is not None:
            sink.response_head(status, reason, head, length, body_expected)  # type: ignore[arg-type]
            if self._gone():
                return  # the sink dropped the connection (its client went away)
        if flags & RESP_UPGRADE:
            self._enter_tunnel(buf[end:])
        elif not body_expected:
            self._complete(buf, end)
        elif flags & RESP_CHUNKED:
            self._chunks = ChunkedDecoder(
                pool.max_head_bytes, pool.max_head_bytes, pool.max_headers
            )
            self._body(buf, end)
        elif self._close_delimited:
            self._body(buf, end)
        else:
            self._left = int(length) if length is not None else 0
            self._body(buf, end)

    def _body(self, buf: bytes, pos: int) -> None:
        """Response body bytes from ``buf[pos:]``, by the framing of the response's head."""
        n = len(buf)
        dec = self._chunks
        if dec is not None:
            try:
                pos = dec.feed(buf, pos, self)
            except ChunkError as exc:
                self._refuse("protocol", f"invalid response: {exc.reason}")
                return
            if not dec.done:
                self._flush()
                return
            self._chunks = None
        elif self._close_delimited:
            sink = self.sink
            if sink is not None and pos < n:
                sink.response_body(_run(buf, pos, n))
            self._flush()
            return
        else:
            left = self._left
            take = n - pos
            if take > left:
                take = left
            if take:
                sink = self.sink
                if sink is not None:
                    sink.response_body(_run(buf, pos, pos + take))
                left -= take
                self._left = left
                pos += take
            if left > 0:
                self._flush()
                return
        if self.state is ConnState.ACTIVE:
            self._complete(buf, pos)

    def _gone(self) -> bool:
        """A callback into the sink dropped this connection (mypy cannot see it change)."""
        return self.state is not ConnState.ACTIVE

    def body_chunk(self, chunk: Chunk) -> None:
        """The chunked decoder's sink (see :meth:`_body`)."""
        sink = self.sink
        if sink is not None:
            sink.response_body(chunk)

    def _flush(self) -> None:
        sink = self.sink
        if sink is not None:
            sink.response_flush()

    def _complete(self, buf: bytes, pos: int) -> None:
        """The response ended at ``buf[pos]``. The connection goes back to the pool only if
        nothing followed it (else stray bytes would be read as the NEXT request's response,
        possibly another client's or tenant's) and the request was written whole."""
        sink, self.sink = self.sink, None
        trailing = pos < len(buf) and bool(buf[pos:].strip(b"\r\n"))  # llhttp skips CR LF
        if (
            self._keep_alive
            and not trailing
            and not self.request_open
            and self.state is ConnState.ACTIVE
        ):
            # A pooled socket must be readable, or a server-side close would go unnoticed.
            self.resume_reading()
            self.state = ConnState.IDLE
            self.idle_since = self.pool.now()
            self.pool._release(self)
        else:
            self._drop()
        if sink is not None:
            sink.response_end()

    def connection_lost(self, exc: Exception | None) -> None:
        self._buf = b""
        self._chunks = None
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
        elif self._close_delimited and not self._head_open and exc is None:
            sink.response_end()  # a response delimited by close ends here, normally
        else:
            sink.response_aborted(UpstreamError("reset", "upstream closed mid-response"))

    def pause_writing(self) -> None:
        if self.sink is not None:
            self.sink.upstream_pause_writing()

    def resume_writing(self) -> None:
        if self.sink is not None:
            self.sink.upstream_resume_writing()

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
        self._buf = b""
        self._parsed = 0
        self._chunks = None
        self._close_delimited = False
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

    def write(self, data: Chunk) -> None:
        if self.transport is not None and self.state is not ConnState.CLOSED:
            self.transport.write(data)

    def write_body(self, data: Chunk) -> None:
        """Request body bytes: an upload in progress keeps the read-idle deadline alive."""
        if self.transport is not None and self.state is not ConnState.CLOSED:
            self.deadline = self.pool.now() + self.read_timeout
            self.transport.write(data)

    def write_chunk(self, data: Chunk) -> None:
        """One chunk of a chunked request body (size line, data, CRLF: one call, no copy)."""
        if self.transport is not None and self.state is not ConnState.CLOSED:
            self.deadline = self.pool.now() + self.read_timeout
            self.transport.writelines((b"%x\r\n" % len(data), data, b"\r\n"))

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


def _run(buf: bytes, start: int, end: int) -> Chunk:
    """``buf[start:end]`` as handed on: the read itself, a copy when small, else a view (the
    body after a head in the same read would otherwise be copied out whole: 64 KiB of a 64 KiB
    response, measured as its largest single cost)."""
    if start == 0 and end == len(buf):
        return buf
    if end - start > BIG_RUN:
        return memoryview(buf)[start:end]
    return buf[start:end]
