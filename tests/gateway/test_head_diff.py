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

from gateway import head as headmod
from gateway.head import Rejected, RequestHead, reference_parse_request
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
        return ("head", result.fields())
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
