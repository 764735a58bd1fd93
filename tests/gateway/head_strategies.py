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
