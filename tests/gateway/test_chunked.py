"""gateway/chunked.py against llhttp (httptools): the same bodies accepted, the same refused.

The oracle is today's reference for chunked request bodies: httptools' HttpRequestParser fed a
chunked request head, the body, and a second request. A body is *accepted* when the parser
completes the message and then parses the second request; *refused* when it raises; otherwise
*incomplete*. The decoder must agree on every corpus body, on every prefix of it, and on every
way of splitting it into two reads; where it accepts, it must deliver the same data and end
exactly where the body ends.
"""

from __future__ import annotations

import os

import httptools
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.chunked import ChunkedDecoder, ChunkError
from gateway.errors import BAD_REQUEST, HEADERS_TOO_LARGE
from gateway.head import Rejected, reference_parse_request

HEAD = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
NEXT = b"GET /next HTTP/1.1\r\nHost: a\r\n\r\n"

ACCEPTED, REFUSED, INCOMPLETE = "accepted", "refused", "incomplete"


class _Oracle:
    def __init__(self) -> None:
        self.body = b""
        self.urls: list[bytes] = []
        self.complete = 0

    def on_url(self, url: bytes) -> None:
        self.urls.append(url)

    def on_body(self, body: bytes) -> None:
        if self.complete == 0:
            self.body += body

    def on_message_complete(self) -> None:
        self.complete += 1


def oracle(body: bytes, then_next: bool = True) -> tuple[str, bytes]:
    cb = _Oracle()
    parser = httptools.HttpRequestParser(cb)
    try:
        parser.feed_data(HEAD + body + (NEXT if then_next else b""))
    except httptools.HttpParserError:
        return REFUSED, cb.body
    if cb.complete >= 1:
        if not then_next:
            return ACCEPTED, cb.body
        # the second request must be parsed from exactly the bytes after the body
        return (ACCEPTED if cb.urls == [b"/", b"/next"] and cb.complete == 2 else REFUSED), cb.body
    return INCOMPLETE, cb.body


class _Sink:
    def __init__(self) -> None:
        self.data = b""

    def body_chunk(self, chunk: bytes) -> None:
        self.data += chunk


def decode(reads: list[bytes], *, max_line: int = 1 << 20) -> tuple[str, bytes, bytes]:
    """Feed ``reads``; returns the outcome, the data, and what followed the body."""
    dec = ChunkedDecoder(max_line, 1 << 20, 1000)
    sink = _Sink()
    for i, read in enumerate(reads):
        try:
            end = dec.feed(read, 0, sink)
        except ChunkError:
            return REFUSED, sink.data, b""
        if dec.done:
            return ACCEPTED, sink.data, read[end:] + b"".join(reads[i + 1 :])
        assert end == len(read)
    return INCOMPLETE, sink.data, b""


CORPUS: list[bytes] = [
    b"5\r\nhello\r\n0\r\n\r\n",
    b"0\r\n\r\n",
    b"000\r\n\r\n",
    b"A\r\n0123456789\r\n0\r\n\r\n",
    b"a\r\n0123456789\r\n0\r\n\r\n",
    b"05\r\nhello\r\n00\r\n\r\n",
    b"1\r\nx\r\n1\r\ny\r\n1\r\nz\r\n0\r\n\r\n",
    b"5;a=b\r\nhello\r\n0\r\n\r\n",
    b"5;a\r\nhello\r\n0\r\n\r\n",
    b"5;a=\r\nhello\r\n0\r\n\r\n",
    b'5;a=""\r\nhello\r\n0\r\n\r\n',
    b'5;a="b c"\r\nhello\r\n0\r\n\r\n',
    b'5;a="b\\"c"\r\nhello\r\n0\r\n\r\n',
    b'5;a="x\ty"\r\nhello\r\n0\r\n\r\n',
    b'5;a="\x80"\r\nhello\r\n0\r\n\r\n',
    b'5;a="x";b\r\nhello\r\n0\r\n\r\n',
    b"5;a=b;c=d\r\nhello\r\n0;x=y\r\n\r\n",
    b"5\r\nhello\r\n0\r\nX-T: 1\r\n\r\n",
    b"5\r\nhello\r\n0\r\nX-T:\r\n\r\n",
    b"5\r\nhello\r\n0\r\nX-T: a  \r\nX-U:\tb\r\n\r\n",
    b"ffffffffffffffff\r\n",
    b"fffffffffffffff\r\nabc",
    # refused
    b"5 \r\nhello\r\n0\r\n\r\n",
    b"5\t\r\nhello\r\n0\r\n\r\n",
    b"5 ;a\r\nhello\r\n0\r\n\r\n",
    b"5; a\r\nhello\r\n0\r\n\r\n",
    b"5;a =b\r\nhello\r\n0\r\n\r\n",
    b"5;a= b\r\nhello\r\n0\r\n\r\n",
    b"5;\r\nhello\r\n0\r\n\r\n",
    b"5;;a\r\nhello\r\n0\r\n\r\n",
    b"5;a=b=c\r\nhello\r\n0\r\n\r\n",
    b"5;a=\x80\r\nhello\r\n0\r\n\r\n",
    b'5;a="x"b\r\nhello\r\n0\r\n\r\n',
    b'5;a="x\r\nhello\r\n0\r\n\r\n',
    b"0x5\r\nhello\r\n0\r\n\r\n",
    b"-5\r\nhello\r\n0\r\n\r\n",
    b"+5\r\nhello\r\n0\r\n\r\n",
    b" 5\r\nhello\r\n0\r\n\r\n",
    b"\r\n5\r\nhello\r\n0\r\n\r\n",
    b";a\r\nhello\r\n0\r\n\r\n",
    b"5\nhello\r\n0\r\n\r\n",
    b"5\rhello\r\n0\r\n\r\n",
    b"5\r\nhello\n0\r\n\r\n",
    b"5\r\nhelloXX0\r\n\r\n",
    b"5\r\nhello\rX0\r\n\r\n",
    b"5\r\nhellox\r\n0\r\n\r\n",
    b"10000000000000000\r\n",
    b"5\r\nhello\r\n0\r\r\n",
    b"5\r\nhello\r\n0\n\r\n",
    b"5\r\nhello\r\n0\r\n\n",
    b"5\r\nhello\r\n0\r\n\rX",
    b"5\r\nhello\r\n0\r\nX-T : 1\r\n\r\n",
    b"5\r\nhello\r\n0\r\n:x\r\n\r\n",
    b"5\r\nhello\r\n0\r\nX\r\n\r\n",
    b"5\r\nhello\r\n0\r\nX-T: \x80\x01\r\n\r\n",
    b"5\r\nhello\r\n0\r\nX-T: a\rb\r\n\r\n",
    b"5\r\nhello\r\n0\r\nX-T: a\nb\r\n\r\n",
    b"5\r\nhello\r\n0\r\nX-T: 1\r\n folded\r\n\r\n",
    b"5\r\nhello\r\n0\r\nX-T: 1\r\n\tfolded\r\n\r\n",
    b"5\r\nhello\r\n0\r\nContent-Length: 5\r\n\r\n",
    b"5\r\nhello\r\n0\r\ncontent-length: 5\r\n\r\n",
    b"5\r\nhello\r\n0\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"5\r\nhello\r\n0\r\n X-T: 1\r\n\r\n",
    b"g\r\n",
    b"5\x00\r\nhello\r\n0\r\n\r\n",
]


def _check(body: bytes) -> None:
    want, want_data = oracle(body)
    for split in range(len(body) + 1):
        got, data, rest = decode([body[:split], body[split:] + NEXT])
        if got == ACCEPTED and rest.lstrip(b"\r\n") != NEXT:
            # The body ended early; what follows goes to the head parser (which skips empty
            # lines, as llhttp does) and is no valid request: llhttp refuses the same bytes.
            assert not rest.lstrip(b"\r\n").startswith(b"GET /next"), (body, split, rest)
            got = REFUSED
        assert got == want, (body, split, got, want)
        if got == ACCEPTED:
            assert data == want_data, (body, split)
    # every prefix of the body alone: incomplete where llhttp waits, refused where it refuses
    for cut in range(len(body)):
        prefix = body[:cut]
        p_want, _ = oracle(prefix, then_next=False)
        p_got, _, rest = decode([prefix])
        if p_got == ACCEPTED and isinstance(reference_parse_request(rest, 8192, 100), Rejected):
            p_got = REFUSED  # what follows the body is refused by the head parser at once
        assert p_got == p_want, (prefix, p_got, p_want)


@pytest.mark.parametrize("body", CORPUS, ids=[repr(b)[:40] for b in CORPUS])
def test_corpus_agrees_with_llhttp(body: bytes) -> None:
    _check(body)


def test_corpus_outcomes_are_the_expected_ones() -> None:
    """The oracle itself: the corpus holds accepted and refused bodies (not only one kind)."""
    outcomes = [oracle(b)[0] for b in CORPUS]
    assert outcomes.count(ACCEPTED) >= 18
    assert outcomes.count(REFUSED) >= 35


_tok = st.text("abcXYZ09-!#$%&'*+.^_`|~", min_size=0, max_size=4).map(str.encode)
_noise = st.sampled_from(
    [b"", b" ", b"\t", b"\r", b"\n", b"\r\n", b";", b"=", b'"', b"\\", b"\x00", b"\x80", b"x", b":"]
)


@st.composite
def _bodies(draw: st.DrawFn) -> bytes:
    out = b""
    for _ in range(draw(st.integers(0, 3))):
        data = draw(st.binary(min_size=1, max_size=12))
        size = b"%x" % len(data)
        if draw(st.booleans()):
            size = size.upper()
        size = b"0" * draw(st.integers(0, 2)) + size
        ext = b""
        for _ in range(draw(st.integers(0, 2))):
            ext += b";" + draw(_tok)
            if draw(st.booleans()):
                ext += b"=" + draw(st.one_of(_tok, _tok.map(lambda t: b'"' + t + b'"')))
        out += size + ext + draw(_noise) + b"\r\n" + data + b"\r\n"
    out += b"0" + draw(_noise) + b"\r\n"
    for _ in range(draw(st.integers(0, 2))):
        out += draw(_tok) + draw(st.sampled_from([b":", b": ", b" :", b""])) + draw(_tok)
        out += draw(st.sampled_from([b"\r\n", b"\n", b"\r\n ", b""]))
    out += draw(st.sampled_from([b"\r\n", b"\n", b"", b"\r"]))
    return out


@settings(max_examples=int(os.environ.get("TURNOUT_CHUNKED_EXAMPLES", "300")), deadline=None)
@given(_bodies())
def test_generated_bodies_agree_with_llhttp(body: bytes) -> None:
    _check(body)


def test_a_long_size_line_is_refused_with_400() -> None:
    dec = ChunkedDecoder(64, 8192, 10)
    with pytest.raises(ChunkError) as info:
        dec.feed(b"5;" + b"a" * 100, 0, _Sink())
    assert info.value.answer is BAD_REQUEST
    dec = ChunkedDecoder(64, 8192, 10)
    with pytest.raises(ChunkError):
        dec.feed(b"5;a=" + b"b" * 70 + b"\r\nhello\r\n", 0, _Sink())


def test_trailers_over_the_limits_are_refused_with_431() -> None:
    dec = ChunkedDecoder(64, 100, 2)
    with pytest.raises(ChunkError) as info:
        dec.feed(b"0\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n", 0, _Sink())
    assert info.value.answer is HEADERS_TOO_LARGE
    dec = ChunkedDecoder(64, 100, 20)
    with pytest.raises(ChunkError) as info:
        dec.feed(b"0\r\nA: " + b"x" * 200, 0, _Sink())  # a partial trailer counts too
    assert info.value.answer is HEADERS_TOO_LARGE
    dec = ChunkedDecoder(64, 100, 2)
    sink = _Sink()
    assert dec.feed(b"0\r\nA: 1\r\nB: 2\r\n\r\nX", 0, sink) == 17 and dec.done


def test_data_is_delivered_as_it_arrives_and_the_offset_is_the_callers() -> None:
    dec = ChunkedDecoder(64, 100, 2)
    sink = _Sink()
    buf = b"HEADxa\r\n01234"
    assert dec.feed(buf, 5, sink) == len(buf)
    assert sink.data == b"01234"
    assert dec.feed(b"56789\r\n0\r\n\r\nNEXT", 0, sink) == 12
    assert sink.data == b"0123456789" and dec.done
