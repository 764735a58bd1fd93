"""Hypothesis strategies for request heads: mostly well-formed, with hostile pieces mixed in
(smuggling pairs, odd whitespace, bad bytes, absolute-form targets, limits). Shared by
tests/gateway/test_head_diff.py and benchmarks/fuzz_head.py."""

from __future__ import annotations

from hypothesis import strategies as st


def mostly(
    common: st.SearchStrategy[bytes], rare: st.SearchStrategy[bytes]
) -> st.SearchStrategy[bytes]:
    return st.integers(0, 9).flatmap(lambda i: rare if i == 0 else common)


NAMES = mostly(
    st.sampled_from(
        [b"Host"] * 8
        + [b"host", b"HOST", b"Content-Length", b"content-length", b"Transfer-Encoding"]
        + [b"Connection", b"Proxy-Connection", b"Upgrade", b"Expect", b"Cookie", b"X-Request-Id"]
        + [b"X-Forwarded-For", b"X-Forwarded-Proto", b"X-Turnout-Deployment", b"X-Turnout-Space"]
        + [b"HTTP2-Settings", b"Keep-Alive", b"X-A", b"x-a", b"TE", b"Accept", b"User-Agent"] * 2
    ),
    st.binary(max_size=6),
)
VALUES = mostly(
    st.sampled_from(
        [b"a.test", b"A.Test:80", b"", b" ", b"chunked", b"gzip, chunked", b"chunked, gzip"]
        + [b"Chunked ", b"chunked\t", b"12", b"012", b" 5 ", b"1 2", b"-1", b"close"]
        + [b"keep-alive", b"upgrade", b"Upgrade, HTTP2-Settings", b"x-a", b"websocket", b"h2c"]
        + [b"100-continue", b"\x80\xff", b"a\tb", b"[::1]:8", b"a b", b"99999999999999999999"]
        + [b"a.test"] * 6
    ),
    st.one_of(st.text("abc.:-/ ,", max_size=8).map(str.encode), st.binary(max_size=4)),
)
SEPS = st.sampled_from([b": "] * 12 + [b":", b":  ", b": \t", b" : ", b":\t"])
EOLS = st.sampled_from([b"\r\n"] * 40 + [b"\n", b"\r", b"\r\n ", b"\r\n\t"])
METHODS = mostly(
    st.sampled_from(
        [b"GET"] * 20
        + [b"POST"] * 10
        + [b"HEAD", b"OPTIONS", b"CONNECT", b"PUT", b"QUERY", b"DESCRIBE", b"SOURCE", b"get"]
        + [b"M-SEARCH"]
    ),
    st.binary(max_size=4),
)
TARGETS = mostly(
    st.sampled_from(
        [b"/p"] * 20
        + [b"/", b"/a?b", b"*", b"/a#f", b"http://a.test/x", b"http://a.test", b"HTTP://a.test?q"]
        + [b"https://u@a.test/", b"a.test:443", b"/\x80", b"http:/x", b"//x", b"/a b", b"*x"]
    ),
    st.binary(max_size=6),
)
VERSIONS = st.sampled_from(
    [b" HTTP/1.1\r\n"] * 40
    + [b" HTTP/1.0\r\n", b" HTTP/2.0\r\n", b" HTTP/0.9\r\n", b"\r\n", b"\n", b" HTTP/1.2\r\n"]
    + [b" RTSP/1.0\r\n", b" ICE/1.0\r\n", b"  HTTP/1.1\r\n", b" HTTP/1.1\n", b" HTTP/1.1 \r\n"]
    + [b" http/1.1\r\n"]
)
LIMITS = st.sampled_from([(8192, 100), (8192, 100), (40, 3), (60, 2), (20, 1), (200, 8)])


@st.composite
def heads(draw: st.DrawFn) -> bytes:
    parts = [
        draw(st.sampled_from([b""] * 6 + [b"\r\n", b"\n"])),
        draw(METHODS),
        draw(st.sampled_from([b" "] * 20 + [b"  ", b"\t"])),
        draw(TARGETS),
        draw(VERSIONS),
    ]
    for _ in range(draw(st.integers(0, 7))):
        parts += [draw(NAMES), draw(SEPS), draw(VALUES), draw(EOLS)]
    parts.append(draw(st.sampled_from([b"\r\n"] * 30 + [b"\n", b"", b"\r"])))
    parts.append(
        draw(st.sampled_from([b""] * 8 + [b"GET / HTTP/1.1\r\n\r\n", b"xyz", b"0\r\n\r\n"]))
    )
    return b"".join(parts)


# ------------------------------------------------------------------------------ response heads

STATUS_LINES = mostly(
    st.sampled_from(
        [b"HTTP/1.1 200 OK\r\n"] * 30
        + [b"HTTP/1.1 204 No Content\r\n", b"HTTP/1.1 304 Not Modified\r\n", b"HTTP/1.0 200 OK\r\n"]
        + [b"HTTP/1.1 101 Switching Protocols\r\n"] * 3
        + [b"HTTP/1.1 404 Not Found\r\n", b"HTTP/1.1 200\r\n", b"HTTP/1.1 200 \r\n"]
        + [
            b"HTTP/2.0 200 OK\r\n",
            b"HTTP/1.2 200 OK\r\n",
            b"RTSP/1.0 200 OK\r\n",
            b"ICE/1.0 200 OK\r\n",
        ]
        + [
            b"HTTP/0.9 200 OK\r\n",
            b"HTTP/1.1 20 OK\r\n",
            b"HTTP/1.1 2000 OK\r\n",
            b"http/1.1 200 OK\r\n",
        ]
        + [b"HTTP/1.1  200 OK\r\n", b"HTTP/1.1 200 OK\n", b"HTTP/1.1 200 O\x00K\xff\r\n"]
        + [b"HTTP/1.1 200 OK\r\r\n", b" HTTP/1.1 200 OK\r\n", b"\r\nHTTP/1.1 200 OK\r\n"]
        + [
            b"HTTP/1.1 199 X\r\n",
            b"HTTP/1.1 500 Internal Server Error\r\n",
            b"HTTP/1.1 200 OK\r\n ",
        ]
        + [b"HTTP/1 200 OK\r\n", b"HTTP/1.1 200 a\nb\r\n", b"HTTP/1.1 103 Early Hints\r\n"]
    ),
    st.binary(max_size=8),
)
INTERIM = st.sampled_from(
    [b""] * 12
    + [b"HTTP/1.1 100 Continue\r\n\r\n", b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"]
    + [b"HTTP/1.1 102 Processing\r\n\r\n\r\n", b"HTTP/1.0 100 Continue\r\n\r\n"]
    + [b"HTTP/1.1 100 Continue\r\nConnection: close\r\n\r\n", b"HTTP/1.1 100 Continue\r\n"]
)
RESPONSE_NAMES = mostly(
    st.sampled_from(
        [b"Content-Length"] * 6
        + [b"content-length", b"Transfer-Encoding", b"transfer-encoding", b"Connection", b"TE"]
        + [b"Proxy-Connection", b"Keep-Alive", b"Upgrade", b"X-Request-Id", b"Trailer"]
        + [b"Proxy-Authenticate", b"Content-Type", b"Server", b"Date", b"Set-Cookie", b"X-A"] * 2
        + [b"x-a", b"Cache-Control", b"Connection-X", b"Upgrad", b"X-B"]
    ),
    st.binary(max_size=6),
)
RESPONSE_VALUES = mostly(
    st.sampled_from(
        [b"5", b"0", b" 5 ", b"012", b"1 2", b"-1", b"5\t", b"99999999999999999999"]
        + [b"18446744073709551615", b"18446744073709551616", b"chunked", b"gzip, chunked"]
        + [b"chunked, gzip", b"Chunked", b"chunked, chunked", b"chunked ", b"chunked\t", b"close"]
        + [b"keep-alive", b"upgrade", b"Upgrade", b"x-a", b"X-A, close", b"websocket", b"h2c"]
        + [b"", b" ", b"text/plain", b"a\tb", b"\x80\xff", b"Keep-Alive", b"upgrade, x-b"]
        + [b"text/html; charset=utf-8"] * 6
    ),
    st.one_of(st.text("abc,:-/ 5", max_size=8).map(str.encode), st.binary(max_size=4)),
)
RESPONSE_LIMITS = st.sampled_from([(8192, 100), (8192, 100), (60, 3), (100, 2), (40, 1), (300, 8)])
OFFERED = st.sampled_from([None, None, b"websocket", b"h2c", b"websocket, h2c", b"WebSocket"])


CLEAN_STATUS = st.sampled_from(
    [b"HTTP/1.1 200 OK\r\n"] * 6
    + [b"HTTP/1.1 101 Switching Protocols\r\n"] * 2
    + [b"HTTP/1.1 204 No Content\r\n", b"HTTP/1.1 304 Not Modified\r\n", b"HTTP/1.0 200 OK\r\n"]
    + [b"HTTP/1.1 404 Not Found\r\n", b"HTTP/1.0 204 OK\r\n", b"HTTP/2.0 200 OK\r\n"]
)
CLEAN_FIELDS = st.sampled_from(
    [
        b"Content-Length: 5",
        b"Content-Length: 0",
        b"content-length: 12",
        b"Transfer-Encoding: chunked",
    ]
    + [b"Transfer-Encoding: gzip, chunked", b"Transfer-Encoding: gzip", b"TE: trailers"]
    + [b"Connection: close", b"Connection: keep-alive", b"Connection: upgrade", b"Trailer: x"]
    + [b"Connection: Upgrade, X-A", b"Connection: x-a", b"Proxy-Connection: close"]
    + [b"Upgrade: websocket", b"Upgrade: h2c", b"Upgrade: WebSocket, h2c", b"X-Request-Id: up"]
    + [b"Keep-Alive: timeout=5", b"X-A: 1", b"x-a: 2", b"Proxy-Authenticate: Basic"]
    + [b"Content-Type: text/plain", b"Server: nginx", b"Set-Cookie: a=b", b"Date: today"] * 3
)


@st.composite
def response_heads(draw: st.DrawFn) -> bytes:
    if draw(st.booleans()):  # well-formed: the decisions after the parse
        parts = [draw(INTERIM), draw(CLEAN_STATUS)]
        for _ in range(draw(st.integers(0, 6))):
            parts += [draw(CLEAN_FIELDS), b"\r\n"]
        parts.append(b"\r\n")
        parts.append(draw(st.sampled_from([b"", b"hello", b"HTTP/1.1 200 OK\r\n\r\n"])))
        return b"".join(parts)
    parts = [draw(INTERIM), draw(STATUS_LINES)]
    for _ in range(draw(st.integers(0, 7))):
        parts += [draw(RESPONSE_NAMES), draw(SEPS), draw(RESPONSE_VALUES), draw(EOLS)]
    parts.append(draw(st.sampled_from([b"\r\n"] * 30 + [b"\n", b"", b"\r", b"\r\r"])))
    parts.append(
        draw(st.sampled_from([b""] * 8 + [b"hello", b"HTTP/1.1 200 OK\r\n\r\n", b"0\r\n\r\n"]))
    )
    return b"".join(parts)
