"""gateway.head.parse_response: the reference against today's decisions (httptools'
HttpResponseParser driven as gateway/upstream.py drives it, tests/gateway/head_oracle.py), and
the compiled twin against the reference.

* the corpus (tests/gateway/corpus/response_heads.jsonl): real-world and hostile response heads
  with today's verdict, every prefix of each (a prefix is what one read may hold);
* generated heads (hypothesis), every prefix too.

Deliberate difference (the corpus case carries a ``note``): an interim (1xx) head never has a
body. llhttp reads one for 104-199 with a Content-Length or Transfer-Encoding, and today's code
passes it to the client before the final head; parse_response reads the bytes after an interim
head as the next head (a refusal, for a body). The oracle reports those as ``interim body`` and
they are not compared. A final head without a reason has none (today keeps the reason of the
interim head before it: the oracle resets it per head). A reason split over two reads is kept
whole (today keeps its last piece); the oracle feeds one read.
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
from gateway.head import Refused, ResponseHead, reference_parse_response
from gateway.headers import response_header_class
from tests.gateway.head_oracle import ResponseVerdict, decided_response, today_response
from tests.gateway.head_strategies import OFFERED, RESPONSE_LIMITS, response_heads

CORPUS = [
    json.loads(line)
    for line in (Path(__file__).parent / "corpus" / "response_heads.jsonl").read_text().splitlines()
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


Args = tuple[int, int, bool, bytes | None]


def args_of(case: dict[str, Any]) -> Args:
    offered = case.get("offered")
    return (
        case["max_bytes"],
        case["max_headers"],
        case.get("head_request", False),
        None if offered is None else offered.encode("latin-1"),
    )


def summary(result: ResponseHead | Refused | None) -> str:
    if result is None:
        return "incomplete"
    if isinstance(result, Refused):
        return f"refused:{result.kind}"
    return f"head:{result.status}"


def key(result: object) -> object:
    if isinstance(result, ResponseHead):
        return ("head", result.fields(), result.summary)
    if isinstance(result, Refused):
        return ("refused", result.kind, result.message)
    return result


def same_as_today(buf: bytes, args: Args) -> None:
    now = today_response(buf, *args)
    if now.kind == "interim body":
        return  # a deliberate difference (see the module docstring)
    result = reference_parse_response(buf, *args)
    assert decided_response(result) == now, (buf, args)
    if isinstance(result, ResponseHead):
        end = result.end
        assert today_response(buf[:end], *args) == now  # the head ends at ``end``...
        assert today_response(buf[: end - 1], *args).kind != "head"  # ... and not before
        assert result.block() == b"".join(n + b": " + v + b"\r\n" for n, v in now.kept or [])


def test_the_implementation_in_use_is_the_one_built() -> None:
    if EXPECT_COMPILED:
        assert headmod.parse_response is compiled().parse_response
    else:
        assert (headmod.parse_response is reference_parse_response) == (_headc is None)


@pytest.mark.parametrize("case", CORPUS, ids=[c["name"] for c in CORPUS])
def test_corpus_reference_verdicts(case: dict[str, Any]) -> None:
    buf = case["head"].encode("latin-1")
    args = args_of(case)
    result = reference_parse_response(buf, *args)
    assert summary(result) == case["expect"]
    if isinstance(result, Refused) and "message" in case:
        assert result.message == case["message"]
    if "note" not in case:
        now = today_response(buf, *args)
        assert now.kind != "interim body"
        assert decided_response(result) == now


def test_corpus_every_prefix_is_decided_as_today() -> None:
    for case in CORPUS:
        buf = case["head"].encode("latin-1")
        for i in range(len(buf) + 1):
            same_as_today(buf[:i], args_of(case))


def test_corpus_extension_equals_reference() -> None:
    ext = compiled()
    for case in CORPUS:
        buf = case["head"].encode("latin-1")
        args = args_of(case)
        for i in range(len(buf) + 1):
            got = key(ext.parse_response(buf[:i], *args))
            assert got == key(reference_parse_response(buf[:i], *args)), (case["name"], i)


def test_head_fields() -> None:
    buf = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: keep-alive, x-a\r\nX-A: 1\r\n"
    buf += b"Server: s\r\nX-Request-Id: up\r\n\r\nhello"
    result = reference_parse_response(buf, 8192, 100, False)
    assert isinstance(result, ResponseHead)
    assert (result.status, result.reason, result.version) == (200, b"OK", 11)
    assert result.end == len(buf) - 5 and result.content_length == b"5"
    assert result.kept == [(b"Server", b"s")]  # X-A nominated, X-Request-Id the gateway's
    assert result.keep_alive and result.body_expected and not result.close_delimited
    head = reference_parse_response(buf, 8192, 100, True)
    assert isinstance(head, ResponseHead) and not head.body_expected  # a HEAD request's


def test_interim_heads_are_skipped() -> None:
    buf = (
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early\r\nLink: <a>\r\n\r\nHTTP/1.1 204 \r\n\r\n"
    )
    result = reference_parse_response(buf, 8192, 100, False)
    assert isinstance(result, ResponseHead) and result.status == 204 and result.end == len(buf)
    assert reference_parse_response(buf[:30], 8192, 100, False) is None


def test_limits() -> None:
    buf = b"HTTP/1.1 200 OK\r\nX-A: " + b"a" * 100 + b"\r\n\r\n"
    assert reference_parse_response(buf, 100, 10, False) == Refused(
        "head_too_large", "upstream response head over 100 bytes"
    )
    assert reference_parse_response(buf[:-10], 100, 10, False) == Refused(
        "head_too_large", "upstream response head over 100 bytes"
    )
    assert reference_parse_response(buf[:-10], 1000, 10, False) is None
    assert reference_parse_response(buf, 1000, 0, False) == Refused(
        "head_too_large", "upstream response head has over 0 headers"
    )


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(response_heads(), RESPONSE_LIMITS, st.booleans(), OFFERED)
def test_generated_reference_decides_as_today(
    buf: bytes, limits: tuple[int, int], head_request: bool, offered: bytes | None
) -> None:
    args = (*limits, head_request, offered)
    same_as_today(buf, args)
    for i in range(0, len(buf), 3):
        same_as_today(buf[:i], args)


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(response_heads(), RESPONSE_LIMITS, st.booleans(), OFFERED)
def test_generated_extension_equals_reference(
    buf: bytes, limits: tuple[int, int], head_request: bool, offered: bytes | None
) -> None:
    ext = compiled()
    args = (*limits, head_request, offered)
    for i in [*range(0, len(buf), 3), len(buf)]:
        got = ext.parse_response(buf[:i], *args)
        ref = reference_parse_response(buf[:i], *args)
        assert key(got) == key(ref)
        if isinstance(ref, ResponseHead):
            assert got.block() == ref.block()


def test_extension_block_kept_and_headers() -> None:
    """The C block, and kept / headers built from it and from the bytes on first access."""
    ext = compiled()
    buf = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade:  websocket\r\nConnection: upgrade\r\n"
    buf += b"X-A:1\r\nX-B: a: b \r\nX-Empty:\r\n\r\n\x81\x00"
    got = ext.parse_response(buf, 8192, 100, False, b"websocket")
    ref = reference_parse_response(buf, 8192, 100, False, b"websocket")
    assert isinstance(got, ResponseHead) and type(got) is headmod.RESPONSE_HEAD_TYPE
    assert isinstance(ref, ResponseHead)
    assert (
        got.block()
        == ref.block()
        == (b"X-A: 1\r\nX-B: a: b \r\nX-Empty: \r\nConnection: upgrade\r\nUpgrade: websocket\r\n")
    )
    assert got.kept == ref.kept and got.headers == ref.headers and got.end == len(buf) - 2
    assert got.fields() == ref.fields()


def test_many_response_headers_past_the_stack_array() -> None:
    ext = compiled()
    lines = b"".join(b"X-H%d: v%d\r\n" % (i, i) for i in range(150))
    buf = b"HTTP/1.1 200 OK\r\n" + lines + b"Content-Length: 0\r\n\r\n"
    for limits in ((8192, 200), (8192, 100), (1000, 200)):
        got = ext.parse_response(buf, *limits, False)
        assert key(got) == key(reference_parse_response(buf, *limits, False))
    got = ext.parse_response(buf, 8192, 200, False)
    assert isinstance(got, ResponseHead) and len(got.kept) == 150


RESPONSE_NAMES_KNOWN = [b"Content-Length", b"Transfer-Encoding", b"Connection", b"Keep-Alive"]
RESPONSE_NAMES_KNOWN += [b"TE", b"Trailer", b"Upgrade", b"Proxy-Connection", b"Proxy-Authenticate"]
RESPONSE_NAMES_KNOWN += [b"X-Request-Id", b"x-request-id", b"Upgrad", b"Connectio", b"Server", b""]


@settings(max_examples=400, deadline=None)
@given(
    st.one_of(
        st.sampled_from(RESPONSE_NAMES_KNOWN),
        st.text("contelgrasfupkixdyqhCONTELGRASFUPKIXDYQH-", max_size=19).map(str.encode),
    )
)
def test_extension_response_header_class(name: bytes) -> None:
    assert compiled().response_header_class_c(name) == response_header_class(name)


def test_oracle_sees_a_head() -> None:
    """The oracle itself: a head is a head, a refusal has today's message."""
    now = today_response(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 8192, 100, False, None)
    assert now.kind == "head" and now.keep_alive and now.content_length == b"0"
    bad = today_response(b"HTTP/1.1 200 OK\r\nA : b\r\n\r\n", 8192, 100, False, None)
    assert bad == ResponseVerdict("refused", ("protocol", "invalid response: Invalid header token"))
