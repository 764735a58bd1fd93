"""Long differential fuzz of gateway.head (not part of the test suite).

    .venv/bin/python benchmarks/fuzz_head.py --minutes 10

Runs the generated heads of tests/gateway/head_strategies.py for the given time against
(1) today's decisions (httptools + the native limits + Dispatcher.prepare) and (2) the compiled
twin gateway._headc when it is importable (build it with scripts/build_compiled.py and run
with ``PYTHONSAFEPATH=1 PYTHONPATH=build/compiled/src:$PWD``; ``--require-compiled`` makes its
absence an error). Prints the number of heads, the verdict mix and every divergence found
(hypothesis shrinks the first one of each test).

``--repeat N`` only parses one typical head N times: run it under callgrind with N and with 0,
the difference over N is the instructions per head (benchmarks/RESULTS.md, "Head processing");
``--response`` fuzzes parse_response instead (the response heads of head_strategies.py, every
prefix, against today's httptools path and the extension); ``--repeat N --response`` counts
instructions for hotpath.py's upstream response head."""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parents[1]))  # after PYTHONPATH (the compiled build)

from hypothesis import HealthCheck, Phase, given, settings

from gateway import head as headmod
from gateway.head import Rejected, RequestHead, reference_parse_request
from tests.gateway.head_oracle import decided, same, today
from tests.gateway.head_strategies import LIMITS, heads


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--require-compiled", action="store_true")
    ap.add_argument(
        "--response",
        action="store_true",
        help="fuzz parse_response (with --repeat: parse hotpath.py's upstream response head)",
    )
    ap.add_argument(
        "--repeat",
        type=int,
        default=0,
        help="no fuzzing: parse benchmarks/hotpath.py's request head N times (for callgrind)",
    )
    args = ap.parse_args()
    if args.response and (args.repeat or "--repeat" in sys.argv):
        response = (
            b"HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Type: text/plain\r\n"
            b"Content-Length: 13\r\nConnection: keep-alive\r\n\r\nHello, world\n"
        )
        parse_response = headmod.parse_response
        for _ in range(args.repeat):
            parse_response(response, 65536, 100, False)
        print(f"{headmod.IMPLEMENTATION}: parsed {args.repeat} response heads")
        return 0
    if args.repeat or "--repeat" in sys.argv:
        head = b"GET /small HTTP/1.1\r\nHost: bench.example.com\r\nUser-Agent: wrk\r\n\r\n"
        parse = headmod.parse_request
        for _ in range(args.repeat):
            parse(head, 8192, 100)
        print(f"{headmod.IMPLEMENTATION}: parsed {args.repeat} heads")
        return 0
    try:
        from gateway import _headc  # type: ignore[attr-defined]
    except ImportError:
        _headc = None
        if args.require_compiled:
            print("gateway._headc is not importable", file=sys.stderr)
            return 2
    if args.response:
        return fuzz_responses(args.minutes, _headc)
    deadline = time.monotonic() + args.minutes * 60
    mix: Counter[str] = Counter()
    failures: list[str] = []
    runs = 0

    def kind(result: RequestHead | Rejected | None) -> str:
        if result is None:
            return "incomplete"
        if isinstance(result, Rejected):
            return f"reject {result.status}"
        return "verdict" if result.verdict is not None else "routed"

    def key(result: RequestHead | Rejected | None) -> object:
        if isinstance(result, RequestHead):
            return result.fields()
        if isinstance(result, Rejected):
            return (result.answer, result.reason)
        return None

    @settings(
        max_examples=2000,  # one round; rounds repeat until the time is up
        deadline=None,
        suppress_health_check=list(HealthCheck),
        phases=[Phase.generate, Phase.shrink],
        database=None,
    )
    @given(heads(), LIMITS)
    def check(buf: bytes, limits: tuple[int, int]) -> None:
        nonlocal runs
        if time.monotonic() > deadline:
            return
        runs += 1
        ref = reference_parse_request(buf, *limits)
        mix[kind(ref)] += 1
        if _headc is not None:
            assert key(_headc.parse_request(buf, *limits)) == key(ref), ("extension", buf)
        if buf.lstrip(b"\r\n").startswith(b"PRI"):
            return
        now = today(buf, *limits)
        if now.kind == "incomplete" and isinstance(ref, Rejected) and ref.status == 431:
            return
        assert same(now, decided(ref)), ("today", buf, limits, now)

    start = time.monotonic()
    while time.monotonic() < deadline:
        try:
            check()
        except Exception as exc:  # a divergence: report it and go on with a new run
            failures.append(repr(exc)[:2000])
            if len(failures) >= 20:
                break
    took = time.monotonic() - start
    print(f"implementation in gateway.head: {headmod.IMPLEMENTATION}")
    print(f"extension compared: {_headc is not None}")
    print(f"heads: {runs} in {took:.0f} s ({runs / max(took, 1e-9):.0f}/s)")
    print("reference verdicts: " + ", ".join(f"{k} {v}" for k, v in sorted(mix.items())))
    print(f"divergences: {len(failures)}")
    for f in failures:
        print("  " + f)
    return 1 if failures else 0


def fuzz_responses(minutes: float, ext: object) -> int:
    """``--response`` without ``--repeat``: parse_response against today (httptools driven as
    gateway/upstream.py drives it) and the extension against the reference, every prefix."""
    from hypothesis import strategies as st

    from gateway.head import Refused, ResponseHead, reference_parse_response
    from tests.gateway.head_oracle import decided_response, today_response
    from tests.gateway.head_strategies import OFFERED, RESPONSE_LIMITS, response_heads

    deadline = time.monotonic() + minutes * 60
    mix: Counter[str] = Counter()
    failures: list[str] = []
    runs = 0

    def key(result: ResponseHead | Refused | None) -> object:
        if isinstance(result, ResponseHead):
            return (result.fields(), result.block())
        if isinstance(result, Refused):
            return (result.kind, result.message)
        return None

    @settings(
        max_examples=2000,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        phases=[Phase.generate, Phase.shrink],
        database=None,
    )
    @given(response_heads(), RESPONSE_LIMITS, st.booleans(), OFFERED)
    def check(
        buf: bytes, limits: tuple[int, int], head_request: bool, offered: bytes | None
    ) -> None:
        nonlocal runs
        if time.monotonic() > deadline:
            return
        runs += 1
        args = (*limits, head_request, offered)
        for i in [*range(len(buf)), len(buf)]:
            ref = reference_parse_response(buf[:i], *args)
            if i == len(buf):
                mix[
                    "incomplete"
                    if ref is None
                    else f"refused {ref.kind}"
                    if isinstance(ref, Refused)
                    else "head"
                ] += 1
            if ext is not None:
                got = ext.parse_response(buf[:i], *args)  # type: ignore[attr-defined]
                assert key(got) == key(ref), ("extension", buf[:i], args)
            now = today_response(buf[:i], *args)
            if now.kind != "interim body":
                assert decided_response(ref) == now, ("today", buf[:i], args, now)

    start = time.monotonic()
    while time.monotonic() < deadline:
        try:
            check()
        except Exception as exc:
            failures.append(repr(exc)[:2000])
            if len(failures) >= 20:
                break
    took = time.monotonic() - start
    print(f"implementation in gateway.head: {headmod.IMPLEMENTATION}")
    print(f"extension compared: {ext is not None}")
    print(f"response buffers: {runs} (every prefix of each) in {took:.0f} s")
    print(
        "reference verdicts (whole buffers): "
        + ", ".join(f"{k} {v}" for k, v in sorted(mix.items()))
    )
    print(f"divergences: {len(failures)}")
    for f in failures:
        print("  " + f)
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
