"""Chunked request bodies (RFC 9112 §7.1), decoded as the bytes arrive.

The native front-end parses request heads in one call (:mod:`gateway.head`); a chunked body that
follows is decoded here, strictly, with llhttp's rules as httptools applied them before
(``tests/gateway/test_chunked.py`` compares the two on a corpus and on generated bodies):

* ``chunk-size`` is one or more hex digits, at most 2⁶⁴ − 1; nothing before it, nothing between
  it and the ``;`` of an extension or the CRLF (no whitespace);
* ``chunk-ext`` is ``;name`` or ``;name=value`` with a token name, and a token (possibly empty)
  or a quoted string as the value; no whitespace anywhere;
* every line ends in CRLF: a bare LF or CR is refused, and the chunk data must be followed by
  CRLF exactly;
* the trailer section after the last chunk is field lines with the head's rules (token name,
  colon, value characters, no obs-fold). A trailer named ``Content-Length`` or
  ``Transfer-Encoding`` is refused, as llhttp refuses it. Trailers are read and dropped: the
  gateway never forwards them (the upstream request ends with ``0 CRLF CRLF``).

Limits: a chunk-size line (with its extensions) longer than ``max_line`` bytes, or a trailer
section over ``max_bytes`` bytes or ``max_fields`` fields, is refused — the first with 400, the
trailer limits with 431, as the head's limits. llhttp had no bound on the size line (it never
buffered one); the bound is what lets this decoder hold a partial line.
"""

from __future__ import annotations

import re
from typing import Final, Protocol

from gateway.errors import BAD_REQUEST, HEADERS_TOO_LARGE, Answer

# Body bytes as handed on: a memoryview of the read when a large run would otherwise be copied
# out of it (the transports write either; see gateway.upstream.BIG_RUN).
Chunk = bytes | memoryview

# Runs of body bytes up to this size are sliced (a copy is cheaper than a view); above, viewed.
BIG_RUN: Final = 4096


class BodySink(Protocol):
    def body_chunk(self, chunk: Chunk) -> None: ...


class ChunkError(Exception):
    """The body can never be valid: answer ``answer`` and parse nothing more."""

    def __init__(self, answer: Answer, reason: str) -> None:
        super().__init__(reason)
        self.answer = answer
        self.reason = reason


_SIZE: Final = 0  # reading a chunk-size line
_DATA: Final = 1  # inside chunk data
_DATA_END: Final = 2  # the CRLF after chunk data
_TRAILERS: Final = 3  # the trailer section
_DONE: Final = 4

_TOKEN_CHARS: Final = rb"!#$%&'*+\-.^_`|~0-9A-Za-z"
# quoted-string: qdtext (HT, SP, ! , # .. [ , ] .. ~, obs-text) or a quoted-pair
_QUOTED: Final = rb'"(?:[\t !#-\[\]-~\x80-\xff]|\\[\t -~\x80-\xff])*"'
# llhttp's extension grammar: ";" then a token name (empty only before "=" or another ";"), then
# maybe "=" and a value: a token (possibly empty), then maybe a quoted string (llhttp takes
# ``a=x"y"`` too).
_EXT: Final = (
    rb"(?:;(?:["
    + _TOKEN_CHARS
    + rb"]*=["
    + _TOKEN_CHARS
    + rb"]*(?:"
    + _QUOTED
    + rb")?|["
    + _TOKEN_CHARS
    + rb"]+|(?=;)))"
)
_SIZE_LINE: Final = re.compile(rb"([0-9A-Fa-f]+)" + _EXT + rb"*\r\n")
# A size line not complete yet: what could still become a valid one (refused at once otherwise):
# the size and whole extensions, then a CR, a lone ";", or an unterminated quoted value.
_SIZE_PREFIX: Final = re.compile(
    rb"(?:[0-9A-Fa-f]+"
    + _EXT
    + rb"*(?:\r|;|;["
    + _TOKEN_CHARS
    + rb"]*=["
    + _TOKEN_CHARS
    + rb']*"(?:[\t !#-\[\]-~\x80-\xff]|\\[\t -~\x80-\xff])*\\?)?)?'
)
_FIELD: Final = re.compile(rb"([" + _TOKEN_CHARS + rb"]+):[ \t]*([\t\x20-\x7e\x80-\xff]*)\r\n")
_MAX_SIZE: Final = 0xFFFFFFFFFFFFFFFF
_HEX_RUN: Final = re.compile(rb"[0-9A-Fa-f]*")
_REFUSED_TRAILERS: Final = frozenset({b"content-length", b"transfer-encoding"})


class ChunkedDecoder:
    """One chunked body. :meth:`feed` consumes bytes and hands the data to the sink."""

    __slots__ = (
        "done",
        "field_bytes",
        "fields",
        "left",
        "max_bytes",
        "max_fields",
        "max_line",
        "partial",
        "state",
    )

    def __init__(self, max_line: int, max_bytes: int, max_fields: int) -> None:
        self.state = _SIZE
        self.left = 0  # data bytes left in the current chunk
        self.partial = b""  # an incomplete line held between reads
        self.done = False
        self.max_line = max_line
        self.max_bytes = max_bytes
        self.max_fields = max_fields
        self.field_bytes = 0
        self.fields = 0

    def feed(self, buf: bytes, pos: int, sink: BodySink) -> int:
        """Decode from ``buf[pos:]``; returns the offset after what was consumed: ``len(buf)``,
        or where the body ended (:attr:`done`; what follows is the next request). Raises
        :class:`ChunkError` for bytes that can never be a valid body."""
        n = len(buf)
        if self.partial:
            buf = self.partial + buf[pos:]
            base = len(self.partial) - pos  # offsets in the new buf minus base = the caller's
            self.partial = b""
            n = len(buf)
            pos = 0
        else:
            base = 0
        while pos < n:
            state = self.state
            if state == _DATA:
                left = self.left
                take = n - pos
                if take > left:
                    take = left
                if pos == 0 and take == n:
                    sink.body_chunk(buf)
                elif take > BIG_RUN:
                    sink.body_chunk(memoryview(buf)[pos : pos + take])
                else:
                    sink.body_chunk(buf[pos : pos + take])
                pos += take
                left -= take
                self.left = left
                if left == 0:
                    self.state = _DATA_END
            elif state == _SIZE:
                m = _SIZE_LINE.match(buf, pos)
                if m is None:
                    # Incomplete (a prefix of a valid line, held for the next read) or invalid.
                    if _SIZE_PREFIX.fullmatch(buf, pos) is None:
                        raise ChunkError(BAD_REQUEST, "invalid chunk-size line")
                    if n - pos > self.max_line:
                        raise ChunkError(BAD_REQUEST, "chunk-size line too long")
                    digits = _HEX_RUN.match(buf, pos).end() - pos  # type: ignore[union-attr]
                    if digits > 16 and int(buf[pos : pos + digits], 16) > _MAX_SIZE:
                        raise ChunkError(BAD_REQUEST, "chunk size overflow")
                    self.partial = buf[pos:]
                    return n - base
                size = int(m.group(1), 16)
                if size > _MAX_SIZE:
                    raise ChunkError(BAD_REQUEST, "chunk size overflow")
                if m.end() - pos > self.max_line:
                    raise ChunkError(BAD_REQUEST, "chunk-size line too long")
                pos = m.end()
                if size == 0:
                    self.state = _TRAILERS
                else:
                    self.left = size
                    self.state = _DATA
            elif state == _DATA_END:
                if buf[pos] != 0x0D:
                    raise ChunkError(BAD_REQUEST, "no CRLF after chunk data")
                if pos + 1 >= n:
                    self.partial = buf[pos:]
                    return n - base
                if buf[pos + 1] != 0x0A:
                    raise ChunkError(BAD_REQUEST, "no CRLF after chunk data")
                pos += 2
                self.state = _SIZE
            elif state == _TRAILERS:
                if buf[pos] == 0x0D:
                    if pos + 1 >= n:
                        self.partial = buf[pos:]
                        return n - base
                    if buf[pos + 1] != 0x0A:
                        raise ChunkError(BAD_REQUEST, "CR without LF after the trailers")
                    pos += 2
                    self.state = _DONE
                    self.done = True
                    return pos - base
                m = _FIELD.match(buf, pos)
                if m is None:
                    line_end = buf.find(b"\n", pos)
                    if line_end < 0 and _TRAILER_PREFIX.fullmatch(buf, pos) is not None:
                        colon = buf.find(b":", pos)
                        lname = buf[pos:colon].lower() if colon >= 0 else b""
                        if lname == b"content-length" or (
                            # llhttp refuses it at the first byte of its value
                            lname == b"transfer-encoding" and buf[colon + 1 :].strip(b" \t\r")
                        ):
                            raise ChunkError(BAD_REQUEST, "framing header in the trailers")
                        self._count(n - pos, 0)
                        self.partial = buf[pos:]
                        return n - base
                    raise ChunkError(BAD_REQUEST, "invalid trailer field")
                end = m.end()
                if end < n and (buf[end] == 0x20 or buf[end] == 0x09):
                    raise ChunkError(BAD_REQUEST, "obs-fold in the trailers")
                name = m.group(1)
                if name.lower() in _REFUSED_TRAILERS:
                    raise ChunkError(BAD_REQUEST, "framing header in the trailers")
                self._count(len(name) + len(m.group(2)) + 4, 1)
                pos = end
            else:
                return pos - base  # done: the rest is the next request
        return n - base

    def _count(self, nbytes: int, nfields: int) -> None:
        """Trailers count toward the limits as head fields do (a partial one by its bytes)."""
        if nfields:
            self.field_bytes += nbytes
            self.fields += nfields
            total = self.field_bytes
        else:
            total = self.field_bytes + nbytes
        if total > self.max_bytes or self.fields > self.max_fields:
            raise ChunkError(HEADERS_TOO_LARGE, "trailer section over the limits")


# A trailer line not complete yet: a token, then maybe the colon and value characters.
_TRAILER_PREFIX: Final = re.compile(
    rb"(?:[" + _TOKEN_CHARS + rb"]+(?::[ \t]*[\t\x20-\x7e\x80-\xff]*\r?)?)?"
)
