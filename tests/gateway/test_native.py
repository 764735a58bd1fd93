"""The native HTTP/1.1 front-end at the byte level, over fake transports (no sockets).

Raw request bytes go into :meth:`ClientConnection.data_received`; what the gateway writes to the
client and to the upstream is captured as bytes. The upstream side is one pooled
:class:`UpstreamConnection` on a fake transport, answered by the test with raw response bytes,
so every step is synchronous and a protocol bug shows as a byte difference, not a timeout.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

import pytest

import gateway.native as gateway_native
import gateway.upstream as gateway_upstream
from gateway.config import GatewayConfig
from gateway.core import GatewayCore
from gateway.native import ClientConnection, NativeServer
from gateway.upstream import ConnState, UpstreamConnection
from routing.compiled import CompiledRoute
from routing.models import decode_record
from routing.store import MemoryRouteStore
from routing.table import RouteTable

HOST = "app.test"
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


class Wire:
    """A transport that records what is written to it."""

    def __init__(self) -> None:
        self.out = bytearray()
        self.closed = False
        self.eof = False
        self.reading = True

    def write(self, data: bytes) -> None:
        assert not self.closed, "write after close"
        self.out += data

    def writelines(self, parts: Iterable[bytes]) -> None:
        for part in parts:
            self.write(part)

    def take(self) -> bytes:
        data = bytes(self.out)
        self.out.clear()
        return data

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.eof = True

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("192.0.2.10", 40000) if name == "peername" else default


class Harness:
    """One client connection to a native server whose route has one pooled upstream."""

    def __init__(self, config: GatewayConfig) -> None:
        table = RouteTable(MemoryRouteStore())
        record = decode_record(
            {
                "host": HOST,
                "version": 1,
                "space_id": "sp",
                "service_id": "svc",
                "endpoints": [
                    {
                        "path_prefix": "/",
                        "targets": [
                            {
                                "deployment_id": "d",
                                "weight": 10000,
                                "status": "active",
                                "upstreams": ["http://127.0.0.1:9"],
                            }
                        ],
                    }
                ],
            }
        )
        table.routes[HOST.encode()] = CompiledRoute(record, table.registry)
        self.core = GatewayCore(config, store=table.store, table=table)
        self.core.open(asyncio.get_running_loop())
        pool = self.pool = self.core.pool
        self.server = NativeServer(self.core)
        replica = table.routes[HOST.encode()].endpoints[0].layout[0].replicas[0]
        self.up = UpstreamConnection(pool, replica.key)
        self.upstream = Wire()
        self.up.connection_made(self.upstream)  # type: ignore[arg-type]
        self.up.state = ConnState.IDLE
        pool._count[replica.key] = 1
        pool._idle[replica.key] = [self.up]
        self.client = ClientConnection(self.server)
        self.wire = Wire()
        self.client.connection_made(self.wire)  # type: ignore[arg-type]

    def send(self, data: bytes) -> bytes:
        """Client bytes in; returns what the gateway wrote to the client since last time."""
        self.client.data_received(data)
        return self.wire.take()

    def answer(self, data: bytes) -> bytes:
        """Upstream bytes in; returns what the gateway wrote to the client since last time."""
        self.up.data_received(data)
        return self.wire.take()

    def upstream_got(self) -> bytes:
        return self.upstream.take()


@pytest.fixture
async def gw() -> Harness:
    return Harness(GatewayConfig(max_header_bytes=1024, max_headers=10))


def request(target: str = "/", *headers: str, method: str = "GET", body: bytes = b"") -> bytes:
    lines = [f"{method} {target} HTTP/1.1", f"Host: {HOST}", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def head_of(response: bytes) -> tuple[bytes, dict[bytes, bytes], bytes]:
    head, _, body = response.partition(b"\r\n\r\n")
    status, *fields = head.split(b"\r\n")
    return status, {k.lower(): v for k, _, v in (f.partition(b": ") for f in fields)}, body


async def test_a_request_is_forwarded_and_its_answer_framed(gw: Harness) -> None:
    assert gw.send(request("/a?q=1")) == b""
    sent = gw.upstream_got()
    assert sent.startswith(b"GET /a?q=1 HTTP/1.1\r\n")
    assert b"\r\nHost: app.test\r\n" in sent and b"X-Forwarded-For: 192.0.2.10\r\n" in sent
    out = gw.answer(OK)
    status, fields, body = head_of(out)
    assert status == b"HTTP/1.1 200 OK" and body == b"ok"
    assert fields[b"content-length"] == b"2" and b"x-request-id" in fields
    assert b"connection" not in fields  # HTTP/1.1: keep-alive by default
    assert not gw.wire.closed and gw.up.state is ConnState.IDLE  # both kept


async def test_pipelined_requests_are_answered_in_order(gw: Harness) -> None:
    assert gw.send(request("/p1") + request("/p2")) == b""
    # Only the first is in flight; the second waits for its turn.
    assert gw.upstream_got().startswith(b"GET /p1 ")
    first = gw.answer(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\np1")
    assert head_of(first)[2] == b"p1"
    assert gw.upstream_got().startswith(b"GET /p2 ")
    second = gw.answer(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\np2")
    assert head_of(second)[2] == b"p2"
    assert not gw.wire.closed


async def test_pipelined_requests_then_garbage_get_answers_then_400(gw: Harness) -> None:
    out = gw.send(request("/p1") + request("/p2") + b"GARBAGE\r\n\r\n")
    assert out == b""  # nothing until the first answer: strictly in order
    assert gw.upstream_got().startswith(b"GET /p1 ")
    assert head_of(gw.answer(OK))[0] == b"HTTP/1.1 200 OK"
    assert gw.upstream_got().startswith(b"GET /p2 ")
    out = gw.answer(OK)
    status, _, rest = head_of(out)
    assert status == b"HTTP/1.1 200 OK"
    # then the bad one's 400, which closes
    status, fields, _ = head_of(rest[2:])
    assert status == b"HTTP/1.1 400 Bad Request" and fields[b"connection"] == b"close"
    assert gw.wire.closed
    assert gw.upstream_got() == b""  # the garbage never reached the upstream


async def test_content_length_with_transfer_encoding_is_refused_before_forwarding(
    gw: Harness,
) -> None:
    out = gw.send(
        request(
            "/x",
            "Content-Length: 5",
            "Transfer-Encoding: chunked",
            method="POST",
            body=b"0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: app.test\r\n\r\n",
        )
    )
    status, fields, body = head_of(out)
    assert status == b"HTTP/1.1 400 Bad Request"
    # llhttp refuses the pair itself (a parse error), the dispatcher would too: either way 400
    assert fields[b"connection"] == b"close" and b'"code":"bad_request"' in body
    assert gw.upstream_got() == b""
    assert gw.wire.closed


async def test_expect_100_continue_is_answered_by_the_gateway(gw: Harness) -> None:
    out = gw.send(request("/up", "Content-Length: 4", "Expect: 100-continue", method="POST"))
    assert out == b"HTTP/1.1 100 Continue\r\n\r\n"
    sent = gw.upstream_got()
    assert sent.startswith(b"POST /up HTTP/1.1\r\n") and b"Expect" not in sent
    assert gw.send(b"data") == b""
    assert gw.upstream_got() == b"data"
    assert head_of(gw.answer(OK))[0] == b"HTTP/1.1 200 OK"


async def test_http_10_client_gets_a_close_delimited_body(gw: Harness) -> None:
    gw.send(f"GET /old HTTP/1.0\r\nHost: {HOST}\r\n\r\n".encode())
    assert gw.upstream_got().startswith(b"GET /old HTTP/1.1\r\n")  # upstream: HTTP/1.1
    out = gw.answer(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
    status, fields, body = head_of(out)
    assert status == b"HTTP/1.1 200 OK"
    assert b"transfer-encoding" not in fields and b"content-length" not in fields
    assert fields[b"connection"] == b"close" and body == b"abc"  # not re-chunked
    assert gw.wire.closed


async def test_http_10_keep_alive_is_honoured(gw: Harness) -> None:
    gw.send(f"GET /old HTTP/1.0\r\nHost: {HOST}\r\nConnection: keep-alive\r\n\r\n".encode())
    gw.upstream_got()
    _, fields, _ = head_of(gw.answer(OK))
    assert fields[b"connection"] == b"keep-alive" and fields[b"content-length"] == b"2"
    assert not gw.wire.closed


@pytest.mark.parametrize(
    "extra",
    [
        pytest.param(["X-Big: " + "a" * 2000], id="header-bytes"),
        pytest.param([f"X-H{i}: v" for i in range(20)], id="header-count"),
    ],
)
async def test_request_heads_over_the_limits_get_431_and_close(
    gw: Harness, extra: list[str]
) -> None:
    status, fields, _ = head_of(gw.send(request("/", *extra)))
    assert status == b"HTTP/1.1 431 Request Header Fields Too Large"
    assert fields[b"connection"] == b"close"
    assert gw.upstream_got() == b""
    assert gw.wire.closed


async def test_unknown_host_is_answered_without_closing(gw: Harness) -> None:
    out = gw.send(b"GET / HTTP/1.1\r\nHost: nowhere.test\r\n\r\n")
    status, fields, body = head_of(out)
    assert status == b"HTTP/1.1 404 Not Found" and b'"code":"not_found"' in body
    assert b"connection" not in fields and not gw.wire.closed
    assert gw.upstream_got() == b""


async def test_body_over_the_route_limit_is_refused_up_front(gw: Harness) -> None:
    status, fields, _ = head_of(
        gw.send(request("/", "Content-Length: 999999999999", method="POST"))
    )
    assert status == b"HTTP/1.1 413 Content Too Large" and fields[b"connection"] == b"close"
    assert gw.upstream_got() == b""


async def test_an_early_answer_to_an_upload_closes_lingering(gw: Harness) -> None:
    gw.send(request("/upload", "Content-Length: 1000", method="POST", body=b"x" * 10))
    assert gw.upstream_got().endswith(b"\r\n\r\n" + b"x" * 10)
    out = gw.answer(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n")
    status, fields, _ = head_of(out)
    assert status == b"HTTP/1.1 401 Unauthorized" and fields[b"connection"] == b"close"
    assert gw.wire.eof and gw.client.closed  # FIN after the answer, then read and drop
    assert gw.up.state is ConnState.CLOSED  # the upstream holds an unfinished request


# ---------------------------------------------------------------- heads trickled in

_PURE = gateway_upstream.__file__.endswith(".py") and gateway_native.__file__.endswith(".py")


def _count_calls(monkeypatch: pytest.MonkeyPatch, module: Any, name: str) -> list[int]:
    """Count the calls of ``module.name`` (only possible on the pure build: compiled modules'
    globals cannot be patched; there the tests check the outcome alone)."""
    calls: list[int] = []
    if _PURE:
        real = getattr(module, name)

        def counted(*args: Any) -> Any:
            calls.append(len(args[0]))
            return real(*args)

        monkeypatch.setattr(module, name, counted)
    return calls


async def test_a_response_head_trickled_line_by_line_is_not_parsed_once_per_line(
    gw: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A hostile origin sends a 64 KiB head as ~13 000 short lines, one read each: the held
    head is parsed again only when it doubled (or an empty line may have ended it), so the
    work is O(n) instead of one whole parse per line; the head is still refused at the limit."""
    calls = _count_calls(monkeypatch, gateway_upstream, "parse_response")
    gw.send(request("/trickle"))
    gw.upstream_got()
    out = gw.answer(b"HTTP/1.1 200 OK\r\n")
    line = b"a:b\r\n"
    for _ in range(70_000 // len(line)):
        out += gw.answer(line)
        if out:
            break
    status, _, _ = head_of(out)
    assert status.startswith(b"HTTP/1.1 502 ") and b"upstream_header_too_large" in out
    assert gw.up.state is ConnState.CLOSED
    if _PURE:
        assert len(calls) < 40, len(calls)  # 1 + doublings, not ~13 000
        assert sum(calls) < 4 * 65536 + 4096


async def test_a_response_head_split_anywhere_is_parsed_when_its_empty_line_arrives(
    gw: Harness,
) -> None:
    response = b"HTTP/1.1 200 OK\r\nX-A: 1\r\nX-B: 2\r\nContent-Length: 2\r\n\r\nok"
    for cut in range(1, len(response)):
        gw.send(request(f"/cut{cut}"))
        gw.upstream_got()
        out = gw.answer(response[:cut]) + gw.answer(response[cut:])
        status, fields, body = head_of(out)
        assert status == b"HTTP/1.1 200 OK" and fields[b"x-b"] == b"2" and body == b"ok", cut
        assert gw.up.state is ConnState.IDLE


async def test_a_request_head_trickled_byte_by_byte_is_parsed_once_per_line(
    gw: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _count_calls(monkeypatch, gateway_native, "parse_request")
    data = request("/slow", "X-A: 1", "X-B: 2")
    for i in range(len(data)):
        assert gw.send(data[i : i + 1]) == b""
    assert gw.upstream_got().startswith(b"GET /slow HTTP/1.1\r\n")
    if _PURE:
        assert len(calls) == 1 + data.count(b"\n"), calls  # the first byte, then per line
