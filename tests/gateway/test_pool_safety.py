"""Upstream bytes that follow a complete response never reach another request (or client)."""

from __future__ import annotations

import asyncio

from gateway.config import GatewayConfig
from gateway.core import GatewayCore
from gateway.native import NativeServer
from gateway.pool import UpstreamPool
from gateway.worker import bind_socket
from routing.compiled import CompiledRoute
from routing.models import decode_record
from routing.store import MemoryRouteStore
from routing.table import RouteTable

SMUGGLED = b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\nSECRET-for-1"


async def _upstream() -> tuple[asyncio.Server, int, list[bytes]]:
    """Answers /first with its response plus a second, unrequested one in the same write."""
    seen: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                path = head.split(b" ", 2)[1]
                seen.append(path)
                body = b"answer " + path
                resp = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%b" % (len(body), body)
                writer.write(resp + SMUGGLED if path == b"/first" else resp)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1], seen


async def _get(port: int, path: str) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET %b HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n" % path.encode())
    data = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    return data


async def test_trailing_upstream_bytes_are_not_handed_to_the_next_request() -> None:
    upstream, uport, seen = await _upstream()
    # pool_max_per_origin=1: both requests must share one upstream connection.
    server, pool, port = await _server(GatewayConfig(pool_max_per_origin=1), uport)
    try:
        first, second = await asyncio.gather(_get(port, "/first"), _get(port, "/second"))
        assert first.endswith(b"answer /first"), first
        assert b"SECRET" not in second, second
        assert second.endswith(b"answer /second"), second
        assert sorted(seen) == [b"/first", b"/second"]
        # The connection that carried stray bytes was dropped, not reused.
        assert pool.connects == 2, pool.stats()
    finally:
        await server.drain(1.0)
        await pool.close()
        upstream.close()


async def _server(config: GatewayConfig, uport: int) -> tuple[NativeServer, UpstreamPool, int]:
    table = RouteTable(MemoryRouteStore())
    record = decode_record(
        {
            "host": "app.test",
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
                            "upstreams": [f"http://127.0.0.1:{uport}"],
                        }
                    ],
                }
            ],
        }
    )
    table.routes[b"app.test"] = CompiledRoute(record, table.registry)
    loop = asyncio.get_running_loop()
    core = GatewayCore(config, store=table.store, table=table)
    core.open(loop)
    pool = core.pool
    server = NativeServer(core)
    sock = bind_socket("127.0.0.1", 0, reuse_port=False)
    await server.listen(sock)
    return server, pool, sock.getsockname()[1]


async def test_stalled_body_of_an_answered_request_is_cut_at_the_deadline() -> None:
    """A request the gateway answers itself (unknown host) whose body stalls must not pin the
    connection: the answer goes out with a close once the header timeout passes."""
    config = GatewayConfig(header_timeout=0.5, keepalive_timeout=30, sweep_interval=0.05)
    server, pool, port = await _server(config, 9)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST /x HTTP/1.1\r\nHost: unknown.test\r\nContent-Length: 1000\r\n\r\nab")
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), 5)  # EOF: the gateway closed
        assert data.startswith(b"HTTP/1.1 404 "), data
        assert b"Connection: close" in data and b'"not_found"' in data
        writer.close()
    finally:
        await server.drain(1.0)
        await pool.close()


async def test_pipelined_requests_beyond_the_limit_pause_reading() -> None:
    """A slow first request and many pipelined ones: reading pauses (bounded memory), and
    every request is still answered, in order, once the first completes."""
    release = asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                path = head.split(b" ", 2)[1]
                if path == b"/slow":
                    await release.wait()
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%b" % (len(path), path))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    upstream = await asyncio.start_server(handle, "127.0.0.1", 0)
    server, pool, port = await _server(GatewayConfig(), upstream.sockets[0].getsockname()[1])
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        n = 200
        writer.write(b"GET /slow HTTP/1.1\r\nHost: app.test\r\n\r\n")
        for start in range(0, n, 10):  # separate reads, as a client streaming requests would
            writer.write(
                b"".join(
                    b"GET /p%d HTTP/1.1\r\nHost: app.test\r\n\r\n" % i
                    for i in range(start, start + 10)
                )
            )
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.2)
        (conn,) = server.connections
        # Reading paused at 16 queued requests; at most one more read was parsed after that.
        assert len(conn.queue) < 40, len(conn.queue)
        release.set()
        data = b""
        while data.count(b"HTTP/1.1 200") < n + 1:
            chunk = await asyncio.wait_for(reader.read(65536), 5)
            assert chunk, data[-200:]
            data += chunk
        bodies = [
            part.rsplit(b"\r\n\r\n", 1)[-1][:8] for part in data.split(b"HTTP/1.1 200 OK")[1:]
        ]
        assert bodies[0].startswith(b"/slow") and bodies[1].startswith(b"/p0")
        assert bodies[-1].startswith(b"/p199")
        writer.close()
    finally:
        await server.drain(1.0)
        await pool.close()
        upstream.close()


# ---------------------------------------------------------------------- response-head limits

LIMIT = 1024


def _head(size: int, *, status: bytes = b"200 OK", headers: int = 1) -> bytes:
    """A response head of exactly ``size`` bytes (``Content-Length: 2`` included, then
    ``headers - 1`` small ones and a filler that makes up the size)."""
    head = b"HTTP/1.1 " + status + b"\r\nContent-Length: 2\r\n"
    head += b"".join(b"X-%d: v\r\n" % i for i in range(headers - 2))
    filler = size - len(head) - len(b"X-Fill: \r\n\r\n")
    assert filler >= 0
    return head + b"X-Fill: " + b"f" * filler + b"\r\n\r\n"


def _interim(size: int) -> bytes:
    head = b"HTTP/1.1 103 Early Hints\r\n"
    return head + b"Link: " + b"l" * (size - len(head) - len(b"Link: \r\n\r\n")) + b"\r\n\r\n"


RESPONSES: dict[bytes, list[bytes]] = {
    b"/exact": [_head(LIMIT) + b"ok"],
    b"/over": [_head(LIMIT + 1) + b"ok"],
    b"/split-exact": [(h := _head(LIMIT))[:300], h[300:700], h[700:] + b"ok"],
    b"/split-over": [(h := _head(LIMIT + 600))[:700], h[700:] + b"ok"],
    b"/five": [_head(200, headers=5) + b"ok"],
    b"/six": [_head(200, headers=6) + b"ok"],
    b"/interim-fits": [_interim(500) + _head(LIMIT - 500) + b"ok"],
    b"/interim-over": [_interim(500) + _head(LIMIT - 499) + b"ok"],
}


async def _limits_upstream() -> tuple[asyncio.Server, int]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                path = head.split(b" ", 2)[1]
                if path.startswith(b"/upload"):
                    await reader.readexactly(30)
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                    continue
                for i, piece in enumerate(RESPONSES[path]):
                    if i:
                        await asyncio.sleep(0.02)  # separate reads at the gateway
                    writer.write(piece)
                    await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def _exchange(port: int, raw: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    data = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    return data


async def test_response_head_limits_are_exact() -> None:
    """``max_response_header_bytes`` counts the head as it is on the wire — interim heads
    included, across reads — and ``max_response_headers`` the headers of each head: at the
    limit a response passes, one byte or one header over it is a 502."""
    assert all(len(_head(n)) == n for n in (LIMIT, LIMIT + 1))
    upstream, uport = await _limits_upstream()
    config = GatewayConfig(max_response_header_bytes=LIMIT, max_response_headers=5)
    server, pool, port = await _server(config, uport)
    try:
        for path, ok in [
            (b"/exact", True),
            (b"/over", False),
            (b"/split-exact", True),
            (b"/split-over", False),
            (b"/five", True),
            (b"/six", False),
            (b"/interim-fits", True),
            (b"/interim-over", False),
        ]:
            data = await _exchange(
                port, b"GET %b HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n" % path
            )
            if ok:
                assert data.startswith(b"HTTP/1.1 200 ") and data.endswith(b"\r\n\r\nok"), data
                assert b"103" not in data  # interim heads are not passed on
            else:
                assert data.startswith(b"HTTP/1.1 502 "), (path, data[:300])
                assert b'"upstream_header_too_large"' in data, data
    finally:
        await server.drain(1.0)
        await pool.close()
        upstream.close()


async def test_head_deadline_starts_when_the_request_is_sent() -> None:
    """An upload slower than ``response_header_timeout`` is not a late head: the origin cannot
    answer before it has the body, so the head deadline starts at the request's end."""
    upstream, uport = await _limits_upstream()
    config = GatewayConfig(response_header_timeout=0.2, sweep_interval=0.02)
    server, pool, port = await _server(config, uport)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST /upload HTTP/1.1\r\nHost: app.test\r\nContent-Length: 30\r\n\r\n")
        for _ in range(3):
            await asyncio.sleep(0.15)  # 0.45 s of upload in all
            writer.write(b"x" * 10)
        data = await asyncio.wait_for(reader.readuntil(b"\r\n\r\nok"), 5)
        assert data.startswith(b"HTTP/1.1 200 "), data
        writer.close()
    finally:
        await server.drain(1.0)
        await pool.close()
        upstream.close()


async def test_dropped_connections_leave_no_cycles_holding_their_buffers() -> None:
    """A connection dropped over an oversized head is freed by reference counting: its parser
    (holding up to a read of head bytes) and the protocol referred to each other, a cycle that
    waited for the cyclic GC — which the gateway runs rarely (gateway.worker)."""
    import gc

    from gateway.upstream import UpstreamConnection

    upstream, uport = await _limits_upstream()
    server, pool, port = await _server(GatewayConfig(max_response_header_bytes=LIMIT), uport)
    gc.collect()
    gc.disable()
    try:
        for _ in range(20):
            data = await _exchange(
                port, b"GET /over HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n"
            )
            assert data.startswith(b"HTTP/1.1 502 ")
        await asyncio.sleep(0.05)  # connection_lost of the last ones
        alive = [o for o in gc.get_objects() if type(o) is UpstreamConnection]
        assert len(alive) <= 1, alive
    finally:
        gc.enable()
        await server.drain(1.0)
        await pool.close()
        upstream.close()
