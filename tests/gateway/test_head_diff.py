"""gateway.head: the compiled twin (Cython) against the reference, and the reference against
today's decisions (httptools + the native limits + Dispatcher.prepare, tests/gateway/head_oracle.py).

* the corpus (tests/gateway/corpus/request_heads.jsonl): real-world and hostile heads with the
  verdict the native server gives them — the reference must give it, and the extension the
  reference's exact result;
* generated heads (hypothesis): the reference decides as today does, and the extension returns
  field for field the same (bytes included).

In the compiled pass (``TURNOUT_EXPECT_COMPILED=1``) the extension must be importable; in the
pure pass the extension tests say why they do not run. The long run is
``benchmarks/fuzz_head.py --minutes 10``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway import head as headmod
from gateway.head import Rejected, RequestHead, reference_parse_request
from gateway.headers import request_header_class
from routing.hostnames import _normalize_request_host
from tests.gateway.head_oracle import decided, same, today
from tests.gateway.head_strategies import LIMITS, heads

CORPUS = [
    json.loads(line)
    for line in (Path(__file__).parent / "corpus" / "request_heads.jsonl").read_text().splitlines()
    if line.strip()
]
EXPECT_COMPILED = os.environ.get("TURNOUT_EXPECT_COMPILED") == "1"

try:
    from gateway import _headc  # type: ignore[attr-defined]
except ImportError:
    _headc = None


def compiled() -> Any:
    if _headc is None:
        if EXPECT_COMPILED:
            pytest.fail("TURNOUT_EXPECT_COMPILED=1 but gateway._headc is not importable")
        pytest.skip("gateway._headc not built (pure pass): run the compiled pass to compare it")
    return _headc


def summary(result: RequestHead | Rejected | None) -> str:
    if result is None:
        return "incomplete"
    if isinstance(result, Rejected):
        return f"reject:{result.status}"
    if result.verdict is not None:
        return f"answer:{result.verdict.status}:{result.verdict.message}"
    return "plan"


def key(result: RequestHead | Rejected | None) -> object:
    if isinstance(result, RequestHead):
        return ("head", result.fields(), result.summary)
    if isinstance(result, Rejected):
        return ("rejected", result.answer, result.reason)
    return result


def test_the_implementation_in_use_is_the_one_built() -> None:
    if EXPECT_COMPILED:
        assert headmod.IMPLEMENTATION == "cython"
        assert headmod.parse_request is compiled().parse_request
    else:
        assert headmod.IMPLEMENTATION in ("python", "cython")
        assert (headmod.IMPLEMENTATION == "cython") == (_headc is not None)


@pytest.mark.parametrize("case", CORPUS, ids=[c["name"] for c in CORPUS])
def test_corpus_reference_verdicts(case: dict[str, Any]) -> None:
    buf = case["head"].encode("latin-1")
    result = reference_parse_request(buf, case["max_bytes"], case["max_headers"])
    assert summary(result) == case["expect"]
    if "note" not in case:  # the deliberate differences carry a note; the rest is today's
        assert same(today(buf, case["max_bytes"], case["max_headers"]), decided(result))


def test_corpus_extension_equals_reference() -> None:
    """Every corpus head, and every prefix of it: the same result, field for field."""
    ext = compiled()
    for case in CORPUS:
        buf = case["head"].encode("latin-1")
        args = (case["max_bytes"], case["max_headers"])
        for i in [*range(0, len(buf), 5), len(buf)]:
            got = key(ext.parse_request(buf[:i], *args))
            assert got == key(reference_parse_request(buf[:i], *args)), (case["name"], i)


def test_corpus_every_prefix_is_incomplete_or_the_same_verdict() -> None:
    """A head arriving in pieces: each prefix is incomplete, or already has the final verdict,
    or is refused for its size (httptools too reports a header at the end of a read, so a head
    over the limits may get 431 before the byte that would have made it a 400)."""
    for case in CORPUS:
        buf = case["head"].encode("latin-1")
        args = (case["max_bytes"], case["max_headers"])
        final = summary(reference_parse_request(buf, *args))
        for i in range(0, len(buf), 7):
            got = summary(reference_parse_request(buf[:i], *args))
            if got != "incomplete":
                assert got in (final, "reject:431"), (case["name"], i, got)
                break


def test_canonical_lines_are_slices_and_others_rebuilt() -> None:
    buf = b"GET / HTTP/1.1\r\nHost: a.test\r\nX-A: 1\r\nx-b:2\r\nX-C: 3\r\nX-D: 4\r\n\r\n"
    result = reference_parse_request(buf, 8192, 100)
    assert isinstance(result, RequestHead) and result.end == len(buf)
    assert result.kept == b"Host: a.test\r\nX-A: 1\r\nx-b: 2\r\nX-C: 3\r\nX-D: 4\r\n"


def test_framing_fields() -> None:
    buf = b"POST /u HTTP/1.1\r\nHost: a.test\r\nContent-Length: 12\r\nExpect: 100-continue\r\n\r\n"
    result = reference_parse_request(buf + b"body", 8192, 100)
    assert isinstance(result, RequestHead)
    assert (result.content_length, result.chunked, result.expect_continue) == (12, False, True)
    assert result.keep_alive and not result.upgrade and result.end == len(buf)
    assert (result.host, result.hostkey, result.path) == (b"a.test", b"a.test", b"/u")


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(heads(), LIMITS)
def test_generated_reference_decides_as_today(buf: bytes, limits: tuple[int, int]) -> None:
    if buf.lstrip(b"\r\n").startswith(b"PRI"):
        return  # the one deliberate difference: PRI is no method here (today: wait, then 400)
    now = today(buf, *limits)
    result = reference_parse_request(buf, *limits)
    if now.kind == "incomplete" and isinstance(result, Rejected):
        assert result.status == 431  # refused before the line ends: over the limit already
        return
    assert same(now, decided(result)), (now, result)


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(heads(), LIMITS)
def test_generated_extension_equals_reference(buf: bytes, limits: tuple[int, int]) -> None:
    ext = compiled()
    assert key(ext.parse_request(buf, *limits)) == key(reference_parse_request(buf, *limits))


# ------------------------------------------------------------------ header_value, the C helpers


def lookups(result: RequestHead) -> list[bytes]:
    """Every name of the head in lower case, and some absent or miscased ones."""
    names = [name.lower() for name, _ in result.headers]
    return [*names, *(n.upper() for n in names), b"host", b"cookie", b"x-absent", b""]


def same_lookups(ext_result: object, ref: RequestHead) -> None:
    assert isinstance(ext_result, RequestHead)
    for lname in lookups(ref):
        assert ext_result.header_value(lname) == ref.header_value(lname), lname


def test_header_value_is_the_first_header_with_the_lower_case_name() -> None:
    buf = b"GET / HTTP/1.1\r\nHost: a.test\r\nX-Sticky:  one \r\nx-sticky: two\r\n\r\n"
    ref = reference_parse_request(buf, 8192, 100)
    assert isinstance(ref, RequestHead)
    assert ref.header_value(b"x-sticky") == b"one "  # as received: trailing OWS kept
    assert ref.header_value(b"X-Sticky") is None  # the name asked for is lower case
    assert ref.header_value(b"x-absent") is None
    if _headc is not None:
        same_lookups(_headc.parse_request(buf, 8192, 100), ref)


def test_corpus_header_value_extension_equals_reference() -> None:
    ext = compiled()
    for case in CORPUS:
        buf = case["head"].encode("latin-1")
        ref = reference_parse_request(buf, case["max_bytes"], case["max_headers"])
        if isinstance(ref, RequestHead):
            same_lookups(ext.parse_request(buf, case["max_bytes"], case["max_headers"]), ref)


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(heads(), LIMITS)
def test_generated_header_value_extension_equals_reference(
    buf: bytes, limits: tuple[int, int]
) -> None:
    ext = compiled()
    ref = reference_parse_request(buf, *limits)
    if isinstance(ref, RequestHead):
        got = ext.parse_request(buf, *limits)
        same_lookups(got, ref)
        assert got.headers == ref.headers  # built lazily, after the lookups


def test_many_headers_past_the_stack_array() -> None:
    """More field lines than the extension keeps on the C stack (32): the heap copy."""
    ext = compiled()
    lines = b"".join(b"X-H%d: v%d\r\n" % (i, i) for i in range(150))
    buf = b"GET / HTTP/1.1\r\nHost: a.test\r\n" + lines + b"Cookie: c=1\r\n\r\n"
    for limits in ((8192, 200), (8192, 100), (1000, 200)):
        assert key(ext.parse_request(buf, *limits)) == key(reference_parse_request(buf, *limits))
    ref = reference_parse_request(buf, 8192, 200)
    assert isinstance(ref, RequestHead) and ref.kept.count(b"\r\n") == 152
    same_lookups(ext.parse_request(buf, 8192, 200), ref)


def test_both_results_are_request_heads() -> None:
    buf = b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n"
    ext = compiled()
    got = ext.parse_request(buf, 8192, 100)
    assert isinstance(got, RequestHead) and type(got) is headmod.HEAD_TYPE
    assert isinstance(reference_parse_request(buf, 8192, 100), headmod.HEAD_TYPES)
    assert not isinstance(ext.parse_request(b"GET / HTTP/1.1\r\n\r\n"[:5], 8192, 100), RequestHead)
    assert isinstance(ext.parse_request(b"GE T", 8192, 100), Rejected)


HOSTISH = st.one_of(
    st.text("abcXYZ019-.:[]", max_size=12).map(str.encode),
    st.text("aB0-.:", max_size=300).map(str.encode),
    st.builds(
        lambda h, p: h + b":" + p,
        st.text("aZ.-", min_size=1, max_size=6).map(str.encode),
        st.text("0123456789:x", max_size=7).map(str.encode),
    ),
    st.builds(
        lambda h, rest: b"[" + h + b"]" + rest,
        st.text("0123456789abcdefABCDEF:.g[", max_size=10).map(str.encode),
        st.sampled_from([b"", b":80", b":", b":65535", b":65536", b":00000", b"x", b":123456"]),
    ),
    st.binary(max_size=8),
)


@settings(max_examples=600, deadline=None)
@given(HOSTISH)
def test_extension_host_normalisation_equals_routing_hostnames(raw: bytes) -> None:
    assert compiled().normalize_host(raw) == _normalize_request_host(raw)


@pytest.mark.parametrize(
    "raw",
    [
        b"A.Test.",
        b"a..b",
        b".a",
        b"a.",
        b"a.:80",
        b"a:0",
        b"a:65536",
        b"[::1]",
        b"[::1]:8",
        b"[::G]",
        b"[::1",
        b"[::1]x",
        b"a" * 253,
        b"a" * 254,
        b"a" * 253 + b".",
        b"",
        b"a b",
    ],
)
def test_extension_host_normalisation_edges(raw: bytes) -> None:
    assert compiled().normalize_host(raw) == _normalize_request_host(raw)


NAMES_KNOWN = [b"Host", b"TE", b"Cookie", b"Expect", b"Upgrade", b"Trailer", b"Connection"]
NAMES_KNOWN += [b"Keep-Alive", b"X-Request-Id", b"Content-Length", b"X-Forwarded-For"]
NAMES_KNOWN += [b"X-Forwarded-Host", b"Transfer-Encoding", b"X-Forwarded-Proto"]
NAMES_KNOWN += [b"X-Turnout-Deployment", b"x-turnout-space", b"X-Turnout-", b"Proxy-", b"proxy"]
NAMES_KNOWN += [b"Proxy-Connection", b"Hos", b"Hostx", b"Cookies", b"x-turnout", b""]
NAMEISH = st.one_of(
    st.sampled_from(NAMES_KNOWN),
    st.text("hostcnkxpryHOSTCNKXPRY-", max_size=22).map(str.encode),
)


@settings(max_examples=600, deadline=None)
@given(NAMEISH)
def test_extension_header_class_equals_request_header_class(name: bytes) -> None:
    assert compiled().header_class(name) == request_header_class(name)


def test_summary_is_the_fields_it_names() -> None:
    """``summary`` (one read for the hot path) carries the same values as the fields, and the
    flag bits are gateway.headers' (the Cython twin repeats them as C constants)."""
    from gateway import headers

    buf = (
        b"POST http://a.test/x?y HTTP/1.0\r\nHost: b.test\r\nConnection: keep-alive\r\n"
        b"Content-Length: 3\r\nExpect: 100-continue\r\n\r\n"
    )
    impls = [reference_parse_request] + ([_headc.parse_request] if _headc is not None else [])
    for parse in impls:
        head = parse(buf, 8192, 100)
        assert isinstance(head, RequestHead)
        method, target, path, host, hostkey, kept, length, flags, match_path = head.summary
        assert match_path == b"/x"  # the path without its query
        assert (method, target, path, host, hostkey, kept, length) == (
            head.method,
            head.target,
            head.path,
            head.host,
            head.hostkey,
            head.kept,
            head.content_length,
        )
        # HTTP/1.0 kept alive by "Connection: keep-alive": still a 1.0 client
        assert flags == (
            headers.HEAD_KEEP_ALIVE | headers.HEAD_VERSION_10 | headers.HEAD_EXPECT_CONTINUE
        )
        assert not flags & headers.HEAD_RARE
        rare = parse(b"GET / HTTP/1.1\r\nHost: a\r\nCookie: c=1\r\n\r\n", 8192, 100)
        assert isinstance(rare, RequestHead) and rare.summary[7] & headers.HEAD_RARE
        bits = parse(
            b"GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
            8192,
            100,
        )
        assert isinstance(bits, RequestHead)
        assert bits.summary[7] == headers.HEAD_CHUNKED
