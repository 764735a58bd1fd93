"""Upstream bytes that follow a complete response never reach another request (or client)."""

from __future__ import annotations

import asyncio

from gateway.config import GatewayConfig
from gateway.counters import Counters
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
    pool = UpstreamPool(config, loop)
    server = NativeServer(config, table, pool, Counters(), loop=loop)
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
