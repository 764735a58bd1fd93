"""Pure-Python cost of one proxied request through the native front-end (no sockets).

A fake client transport feeds request bytes to ``ClientConnection``; a fake upstream transport
answers every request head it receives with a canned response, synchronously. What remains is the
gateway's own per-request work (parsing callbacks, dispatch, pool, response framing, counters):
the part of the profile that is ours to optimise. Not a test. Usage::

    .venv/bin/python benchmarks/hotpath.py [--requests 200000] [--profile] [--pure]

By default it measures the mypyc-compiled hot path (built out of tree by
``scripts/build_compiled.py``, as ``pip install .`` installs it); ``--pure`` measures the
pure-Python sources an editable install runs.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import pstats
import sys
import time
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
if "--pure" not in sys.argv:
    sys.path.insert(0, os.path.join(ROOT, "scripts"))
    import build_compiled

    sys.path[0] = str(build_compiled.build())  # compiled routing/ and gateway/ come first

from gateway import build
from gateway.config import GatewayConfig
from gateway.core import GatewayCore
from gateway.native import ClientConnection, NativeServer
from gateway.upstream import ConnState, UpstreamConnection
from routing.compiled import CompiledRoute
from routing.models import decode_record
from routing.store import MemoryRouteStore
from routing.table import RouteTable

REQUEST = b"GET /small HTTP/1.1\r\nHost: bench.example.com\r\nUser-Agent: wrk\r\n\r\n"
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Type: text/plain\r\n"
    b"Content-Length: 13\r\nConnection: keep-alive\r\n\r\nHello, world\n"
)
# --browser: what a browser sends and a web framework answers (12 request, 10 response headers)
BROWSER_REQUEST = (
    b"GET /small?q=1 HTTP/1.1\r\nHost: bench.example.com\r\n"
    b"User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0\r\n"
    b"Accept: text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8\r\n"
    b"Accept-Language: en-US,en;q=0.5\r\nAccept-Encoding: gzip, deflate, br\r\n"
    b"Referer: https://bench.example.com/\r\nConnection: keep-alive\r\n"
    b"Cookie: session=0123456789abcdef; theme=dark\r\nUpgrade-Insecure-Requests: 1\r\n"
    b"Sec-Fetch-Dest: document\r\nSec-Fetch-Mode: navigate\r\nSec-Fetch-Site: same-origin\r\n"
    b"\r\n"
)
BROWSER_RESPONSE = (
    b"HTTP/1.1 200 OK\r\nServer: nginx\r\nDate: Wed, 02 Dec 2026 12:00:00 GMT\r\n"
    b"Content-Type: text/html; charset=utf-8\r\nContent-Length: 13\r\n"
    b"Connection: keep-alive\r\nCache-Control: no-cache\r\nVary: Accept-Encoding\r\n"
    b"X-Content-Type-Options: nosniff\r\nSet-Cookie: seen=1; Path=/; HttpOnly\r\n"
    b'ETag: "5f3-13"\r\n\r\nHello, world\n'
)


class FakeTransport:
    def __init__(self, on_write: Any = None) -> None:
        self.on_write = on_write
        self.written = 0
        self.closing = False

    def write(self, data: bytes) -> None:
        self.written += len(data)
        if self.on_write is not None:
            self.on_write(data)

    def writelines(self, parts: Any) -> None:
        for p in parts:
            self.write(p)

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = True

    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...
    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None: ...
    def can_write_eof(self) -> bool:
        return False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else default


def bench_record(host: str, i: int) -> Any:
    """Route ``i`` of the harness: 90 / 10 stable and canary on the one fake upstream (route 0
    is the one the single-host figures were always measured with)."""
    n = str(i) if i else ""
    return decode_record(
        {
            "host": host,
            "version": 1,
            "space_id": f"bench{n}",
            "service_id": "svc" + n,
            "endpoints": [
                {
                    "path_prefix": "/",
                    "targets": [
                        {
                            "deployment_id": f"stable{n}",
                            "weight": 9000,
                            "status": "active",
                            "upstreams": ["http://127.0.0.1:9"],
                        },
                        {
                            "deployment_id": f"canary{n}",
                            "weight": 1000,
                            "status": "canary",
                            "upstreams": ["http://127.0.0.1:9"],
                        },
                    ],
                }
            ],
        }
    )


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=200_000)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--pure", action="store_true", help="pure-Python sources, not the mypyc build")
    ap.add_argument(
        "--browser", action="store_true", help="browser-like heads (12 + 10 headers), not wrk's"
    )
    ap.add_argument(
        "--body", type=int, default=0, help="a response body of N bytes instead of 13 (e.g. 65536)"
    )
    ap.add_argument(
        "--read", type=int, default=65536, help="with --body: the upstream's bytes in reads of K"
    )
    ap.add_argument(
        "--hosts",
        type=int,
        default=1,
        help="N routes (one per hostname, the same upstream); requests go round-robin over them",
    )
    args = ap.parse_args()
    request, response = (BROWSER_REQUEST, BROWSER_RESPONSE) if args.browser else (REQUEST, RESPONSE)
    if args.body:
        head = response[: response.index(b"Content-Length:")]
        response = head + b"Content-Length: %d\r\n\r\n" % args.body + b"x" * args.body
    reads = [response[i : i + args.read] for i in range(0, len(response), args.read)]
    loop = asyncio.get_running_loop()
    config = GatewayConfig()
    table = RouteTable(MemoryRouteStore())
    hosts = [b"bench.example.com"] + [b"h%d.bench.example.com" % i for i in range(1, args.hosts)]
    for i, host in enumerate(hosts):
        table.routes[host] = CompiledRoute(bench_record(host.decode(), i), table.registry)
    requests = [request.replace(b"bench.example.com", host, 1) for host in hosts]
    core = GatewayCore(config, store=table.store, table=table)
    core.open(loop)
    pool = core.pool
    server = NativeServer(core)
    # One pooled upstream connection whose transport answers synchronously.
    replica = table.routes[b"bench.example.com"].endpoints[0].layout[0].replicas[0]
    up = UpstreamConnection(pool, replica.key)
    pending: list[bytes] = []
    up.connection_made(FakeTransport(pending.append))  # type: ignore[arg-type]
    up.state = ConnState.IDLE
    pool._count[replica.key] = 1
    pool._idle[replica.key] = [up]
    client = ClientConnection(server)
    ct = FakeTransport()
    client.connection_made(ct)  # type: ignore[arg-type]

    def run(n: int) -> float:
        heads = (requests * (n // len(requests) + 1))[:n]
        t0 = time.perf_counter()
        for head in heads:
            client.data_received(head)  # request in: parse, dispatch, write upstream
            pending.clear()
            for read in reads:
                up.data_received(read)  # response back: parse, frame, write to the client
        return time.perf_counter() - t0

    run(2000)
    assert not client.closed and pool.reuses >= 2000, "the harness did not proxy"
    if args.profile:
        prof = cProfile.Profile()
        prof.enable()
        run(args.requests // 4)
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(25)
    best = min(run(args.requests) for _ in range(3))
    print(
        f"{build.describe()}: {args.requests} requests over {len(hosts)} host(s): {best / args.requests * 1e6:.2f} µs of gateway Python per request "
        f"({args.requests / best:,.0f} req/s on one core without I/O)"
    )


if __name__ == "__main__":
    import uvloop

    uvloop.run(main())
