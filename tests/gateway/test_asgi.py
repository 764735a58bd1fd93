"""The ASGI front-end: the app driven directly with fake ASGI receive/send against real upstream
servers on loopback, plus real uvicorn and granian processes in front of a real Redis."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator, MutableMapping
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis

from gateway import wsframes
from gateway.asgi import GatewayApp, _claim_slot, config_from_env, export_config
from gateway.config import GatewayConfig, parse_networks
from routing.keys import Keys
from routing.models import RouteRecord, decode_record
from routing.redis_store import RedisRouteStore
from routing.store import MemoryRouteStore
from routing.upstreams import EjectionPolicy
from tests.support.net import free_port
from tests.support.upstream import UpstreamServer

ROOT = Path(__file__).resolve().parents[2]
HOST = "app.example.com"

Message = MutableMapping[str, Any]


# ----------------------------------------------------------------------------- helpers


def record(
    host: str,
    upstreams: list[str],
    *,
    version: int = 1,
    policy: dict[str, Any] | None = None,
    prefix: str = "/",
    deployment: str = "dep-1",
) -> RouteRecord:
    obj: dict[str, Any] = {
        "host": host,
        "version": version,
        "space_id": "space-1",
        "service_id": "svc-1",
        "updated_at": 1_700_000_000_000,
        "endpoints": [
            {
                "path_prefix": prefix,
                "methods": [],
                "targets": [
                    {
                        "deployment_id": deployment,
                        "weight": 10000,
                        "status": "active",
                        "upstreams": upstreams,
                    }
                ],
            }
        ],
    }
    if policy:
        obj["policy"] = policy
    return decode_record(obj)


def refused_url() -> str:
    return f"http://127.0.0.1:{free_port()}"  # nothing listens there


class Response:
    def __init__(self) -> None:
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.bodies: list[tuple[bytes, bool]] = []
        self.complete = False

    @property
    def body(self) -> bytes:
        return b"".join(b for b, _ in self.bodies)

    def header(self, name: bytes) -> bytes | None:
        for k, v in self.headers:
            if k == name:
                return v
        return None

    def json(self) -> Any:
        return json.loads(self.body)


def http_scope(
    method: str,
    path: str,
    *,
    host: str = HOST,
    query: bytes = b"",
    headers: list[tuple[bytes, bytes]] | None = None,
    client: tuple[str, int] | None = ("10.0.0.1", 50000),
    version: str = "1.1",
) -> dict[str, Any]:
    hdrs = [(b"host", host.encode())] if host else []
    hdrs += headers or []
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": version,
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query,
        "root_path": "",
        "headers": hdrs,
        "client": client,
        "server": ("127.0.0.1", 8080),
    }


async def call(
    app: GatewayApp,
    method: str,
    path: str,
    *,
    body: list[bytes] | None = None,
    on_body: Any = None,
    send_delay: float = 0.0,
    consumed: list[int] | None = None,
    **kwargs: Any,
) -> Response:
    """One request through the app. ``body``: the request body messages. ``on_body``: called
    with each response body message; returning True makes the client disconnect."""
    scope = http_scope(method, path, **kwargs)
    messages: list[Message] = []
    parts = body if body is not None else [b""]
    for i, part in enumerate(parts):
        messages.append({"type": "http.request", "body": part, "more_body": i < len(parts) - 1})
    gone = asyncio.Event()
    resp = Response()

    async def receive() -> Message:
        if messages:
            if consumed is not None:
                consumed.append(len(messages))
            return messages.pop(0)
        await gone.wait()  # like uvicorn: blocks until the response is done or the client left
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        if send_delay:
            await asyncio.sleep(send_delay)
        if message["type"] == "http.response.start":
            assert resp.status == 0, "response started twice"
            resp.status = message["status"]
            resp.headers = [(bytes(k), bytes(v)) for k, v in message["headers"]]
            for name, _ in resp.headers:
                assert name == name.lower()
        elif message["type"] == "http.response.body":
            assert resp.status, "body before start"
            assert not resp.complete, "body after the end"
            more = message.get("more_body", False)
            resp.bodies.append((message.get("body", b""), more))
            if not more:
                resp.complete = True
                gone.set()
            elif on_body is not None and on_body(message.get("body", b"")):
                gone.set()
        else:  # pragma: no cover - unexpected message
            raise AssertionError(message)

    await asyncio.wait_for(app(scope, receive, send), 10)
    return resp


def echo_headers(resp: Response) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for k, v in resp.json()["headers"]:
        out.setdefault(k.lower(), []).append(v)
    return out


@contextlib.asynccontextmanager
async def upstream_server(mode: str = "normal") -> AsyncIterator[UpstreamServer]:
    """The test upstream (tests.support.upstream) in this process, on 127.0.0.1:0."""
    server = UpstreamServer("up", mode)
    writers: set[asyncio.StreamWriter] = set()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.add(writer)
        try:
            await server.handle(reader, writer)
        finally:
            writers.discard(writer)

    srv = await asyncio.start_server(handle, "127.0.0.1", 0, limit=1 << 20)
    server.port = srv.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
    server.url = f"http://127.0.0.1:{server.port}"  # type: ignore[attr-defined]
    try:
        yield server
    finally:
        srv.close()
        for writer in list(writers):
            writer.transport.abort()  # handlers see EOF and return
        for _ in range(100):
            if not writers:
                break
            await asyncio.sleep(0.01)
        await srv.wait_closed()


def gw_config(**overrides: Any) -> GatewayConfig:
    values: dict[str, Any] = {
        "internal_port": 0,
        "flush_interval": 0.2,
        "sweep_interval": 0.02,
        "high_water": 64 * 1024,
    }
    values.update(overrides)
    return GatewayConfig(**values)


@contextlib.asynccontextmanager
async def gateway(*records: RouteRecord, **overrides: Any) -> AsyncIterator[GatewayApp]:
    store = MemoryRouteStore()
    for rec in records:
        await store.publish(rec)
    app = GatewayApp(config=gw_config(**overrides), store=store)
    await app.startup()
    try:
        yield app
    finally:
        await app.shutdown()


@pytest.fixture
async def up() -> AsyncIterator[UpstreamServer]:
    async with upstream_server() as server:
        yield server


def url(server: UpstreamServer) -> str:
    return str(server.url)  # type: ignore[attr-defined]


# ----------------------------------------------------------------------------- http


async def test_forwarded_with_header_rules(up: UpstreamServer) -> None:
    async with gateway(record(HOST, [url(up)])) as app:
        resp = await call(
            app,
            "GET",
            "/echo/a%20b",
            query=b"x=1&y=%2F",
            headers=[
                (b"x-turnout-space", b"evil"),
                (b"x-turnout-deployment", b"other"),
                (b"x-turnout-anything", b"1"),
                (b"x-forwarded-host", b"evil.example"),
                (b"x-forwarded-for", b"192.0.2.7"),
                (b"connection", b"x-private"),
                (b"x-private", b"secret"),
                (b"accept", b"application/json"),
            ],
        )
        assert resp.status == 200
        echo = resp.json()
        assert echo["target"] == "/echo/a%20b?x=1&y=%2F"
        seen = echo_headers(resp)
        assert seen["host"] == [HOST]
        assert seen["x-forwarded-for"] == ["192.0.2.7, 10.0.0.1"]
        assert seen["x-forwarded-host"] == [HOST]
        assert seen["x-forwarded-proto"] == ["http"]
        assert seen["x-turnout-space"] == ["space-1"]
        assert seen["x-turnout-service"] == ["svc-1"]
        assert seen["x-turnout-deployment"] == ["dep-1"]
        assert "x-turnout-anything" not in seen
        assert "x-private" not in seen and "connection" not in seen
        assert seen["accept"] == ["application/json"]
        rid = resp.header(b"x-request-id")
        assert rid and seen["x-request-id"] == [rid.decode()]
        assert resp.header(b"content-type") == b"application/json"
        assert resp.header(b"content-length") == str(len(resp.body)).encode()
        assert resp.header(b"connection") is None
        # counted like the native front-end
        assert app.counters.requests_total == 1
        assert app.counters.by_class[2] == 1
        row = app.counters.pending[(b"space-1", b"svc-1", b"dep-1")]
        assert row[0] == 1 and row[1] == 1  # requests, 2xx


async def test_client_request_id_kept_and_hop_by_hop_response_stripped(
    up: UpstreamServer,
) -> None:
    async with gateway(record(HOST, [url(up)])) as app:
        resp = await call(app, "GET", "/hop", headers=[(b"x-request-id", b"abc-123")])
        assert resp.status == 200
        assert resp.header(b"x-request-id") == b"abc-123"
        assert resp.header(b"x-normal") == b"kept"
        assert resp.header(b"x-up") is None
        assert resp.header(b"keep-alive") is None
        assert resp.header(b"connection") is None


async def test_request_bodies_stream_upstream(up: UpstreamServer) -> None:
    payload = os.urandom(300_000)
    parts = [payload[i : i + 50_000] for i in range(0, len(payload), 50_000)]
    sha = hashlib.sha256(payload).hexdigest()
    async with gateway(record(HOST, [url(up)])) as app:
        # with Content-Length
        resp = await call(
            app,
            "POST",
            "/upload",
            body=parts,
            headers=[(b"content-length", str(len(payload)).encode())],
        )
        assert resp.status == 200
        assert resp.json()["length"] == len(payload) and resp.json()["sha256"] == sha
        # chunked (the ASGI server de-chunked it; the gateway re-chunks upstream)
        resp = await call(
            app, "POST", "/echo", body=parts, headers=[(b"transfer-encoding", b"chunked")]
        )
        assert resp.status == 200
        assert resp.json()["body_length"] == len(payload)
        assert resp.json()["body_sha256"] == sha
        seen = echo_headers(resp)
        assert seen["transfer-encoding"] == ["chunked"] and "content-length" not in seen


async def test_http2_body_without_length_gets_framed(up: UpstreamServer) -> None:
    async with gateway(record(HOST, [url(up)])) as app:
        resp = await call(app, "POST", "/echo", body=[b"abc", b"def"], version="2")
        assert resp.json()["body_length"] == 6
        assert echo_headers(resp)["transfer-encoding"] == ["chunked"]
        resp = await call(app, "POST", "/echo", body=[b"whole"], version="2")
        assert resp.json()["body_length"] == 5
        assert echo_headers(resp)["content-length"] == ["5"]
        resp = await call(app, "GET", "/echo", version="2")
        seen = echo_headers(resp)
        assert resp.json()["body_length"] == 0
        assert "content-length" not in seen and "transfer-encoding" not in seen


async def test_cl_and_te_is_reframed_and_closes(up: UpstreamServer) -> None:
    async with gateway(record(HOST, [url(up)])) as app:
        resp = await call(
            app,
            "POST",
            "/echo",
            body=[b"hello ", b"world"],
            headers=[(b"content-length", b"3"), (b"transfer-encoding", b"chunked")],
        )
        assert resp.status == 200
        assert resp.json()["body_length"] == 11
        seen = echo_headers(resp)
        assert seen["transfer-encoding"] == ["chunked"] and "content-length" not in seen
        assert resp.header(b"connection") == b"close"


async def test_upgrade_in_http_scope_is_a_plain_request(up: UpstreamServer) -> None:
    async with gateway(record(HOST, [url(up)])) as app:
        resp = await call(
            app, "GET", "/echo", headers=[(b"connection", b"upgrade"), (b"upgrade", b"h2c")]
        )
        assert resp.status == 200
        seen = echo_headers(resp)
        assert "upgrade" not in seen and "connection" not in seen


async def test_head_and_no_content(up: UpstreamServer) -> None:
    async with gateway(record(HOST, [url(up)])) as app:
        resp = await call(app, "HEAD", "/bytes/1000")
        assert resp.status == 200
        assert resp.header(b"content-length") == b"1000"
        assert resp.body == b""
        resp = await call(app, "GET", "/status/204")
        assert resp.status == 204 and resp.body == b""
        assert resp.header(b"content-length") is None


async def test_not_found_and_no_route(up: UpstreamServer) -> None:
    async with gateway(record(HOST, [url(up)], prefix="/api")) as app:
        resp = await call(app, "GET", "/api/x", host="nobody.example.com")
        assert resp.status == 404
        assert resp.header(b"content-type") == b"application/json"
        error = resp.json()["error"]
        assert error["code"] == "not_found"
        assert resp.header(b"x-request-id") == error["request_id"].encode()
        resp = await call(app, "GET", "/apiary")
        assert resp.status == 404
        assert resp.json()["error"]["code"] == "no_route"
        resp = await call(app, "GET", "/x", host="")
        assert resp.status == 400 and resp.header(b"connection") == b"close"
        assert app.counters.by_class[4] == 3
        assert not app.counters.pending  # answered before any deployment was chosen


async def test_payload_too_large(up: UpstreamServer) -> None:
    rec = record(HOST, [url(up)], policy={"max_body_bytes": 1000})
    async with gateway(rec) as app:
        # known up front from Content-Length
        resp = await call(
            app, "POST", "/upload", body=[b"x" * 2000], headers=[(b"content-length", b"2000")]
        )
        assert resp.status == 413
        assert resp.json()["error"]["code"] == "payload_too_large"
        assert resp.header(b"connection") == b"close"
        # counted while streaming a chunked body
        resp = await call(
            app,
            "POST",
            "/upload",
            body=[b"x" * 600, b"x" * 600, b"x" * 600],
            headers=[(b"transfer-encoding", b"chunked")],
        )
        assert resp.status == 413
        assert resp.json()["error"]["code"] == "payload_too_large"
        # under the limit: forwarded
        resp = await call(
            app, "POST", "/upload", body=[b"x" * 1000], headers=[(b"content-length", b"1000")]
        )
        assert resp.status == 200 and resp.json()["length"] == 1000


async def test_bad_gateway_on_refused_port() -> None:
    async with gateway(record(HOST, [refused_url()])) as app:
        resp = await call(app, "GET", "/echo")
        assert resp.status == 502
        assert resp.json()["error"]["code"] == "bad_gateway"
        assert app.counters.connect_errors == 1
        row = app.counters.pending[(b"space-1", b"svc-1", b"dep-1")]
        assert row[3] == 1  # 5xx, recorded against the deployment
        assert sum(row.hist) == 1  # and its latency


async def test_connect_failure_moves_to_another_replica(up: UpstreamServer) -> None:
    rec = record(HOST, [refused_url(), url(up)], policy={"retries": 1})
    async with gateway(rec, ejection=EjectionPolicy(max_fails=1, eject_seconds=60)) as app:
        for _ in range(4):
            resp = await call(app, "GET", "/echo")
            assert resp.status == 200
        assert app.counters.connect_errors == 1  # then the dead replica was ejected


async def test_gateway_timeout_on_slow_upstream(up: UpstreamServer) -> None:
    rec = record(HOST, [url(up)], policy={"read_timeout_ms": 200, "retries": 0})
    async with gateway(rec) as app:
        started = time.monotonic()
        resp = await call(app, "GET", "/slow/1500")
        assert resp.status == 504
        assert resp.json()["error"]["code"] == "gateway_timeout"
        assert time.monotonic() - started < 2.0
        assert app.counters.timeouts_total == 1
        # An error of the deployment for the rollout gate: a 5xx that is also a timeout.
        row = app.counters.pending[(b"space-1", b"svc-1", b"dep-1")]
        assert (row[3], row[5]) == (1, 1)  # 5xx, timeouts
        assert sum(row.hist) == 1 and 150 <= row.latency_ms < 2000


async def test_stale_keepalive_connection_is_retried_fresh() -> None:
    async with upstream_server("stale") as stale, gateway(record(HOST, [url(stale)])) as app:
        for _ in range(3):
            resp = await call(app, "GET", "/echo")
            assert resp.status == 200
        # 1st: a new connection, answered, pooled. 2nd and 3rd: sent on the pooled one, which
        # drops them unanswered (reused, stale), then retried once each on a fresh connection.
        stats = app.pool.stats()
        assert (stats["connects"], stats["reuses"]) == (3, 2), stats
        assert len(stale.seen) == 5


async def test_upstream_dropping_mid_response() -> None:
    async with upstream_server() as srv, gateway(record(HOST, [url(srv)])) as app:
        resp = await call(app, "GET", "/close-mid")
        assert resp.status == 200
        assert not resp.complete  # the client learns it from the connection being cut
        resp = await call(app, "POST", "/drop", body=[b"data"], headers=[(b"content-length", b"4")])
        assert resp.status == 502


async def test_streaming_response_arrives_in_several_messages(up: UpstreamServer) -> None:
    async with gateway(record(HOST, [url(up)])) as app:
        resp = await call(app, "GET", "/stream/5/40")
        assert resp.status == 200
        assert resp.header(b"content-type") == b"text/event-stream"
        assert resp.body == b"".join(f"data: {i}\n\n".encode() for i in range(5))
        assert len([b for b, more in resp.bodies if b and more]) >= 3
        assert resp.complete


async def test_large_response_is_streamed_with_backpressure(up: UpstreamServer) -> None:
    async with gateway(record(HOST, [url(up)])) as app:
        resp = await call(app, "GET", "/bytes/3000000")
        assert resp.status == 200
        assert len(resp.body) == 3_000_000
        assert max(len(b) for b, _ in resp.bodies) < 3_000_000
        assert app.pool.stats()["idle"] == 1  # the connection went back to the pool
        # a slow client: the upstream socket is paused, so what piles up stays bounded
        resp = await call(app, "GET", "/bytes/3000000", send_delay=0.002)
        assert len(resp.body) == 3_000_000
        assert max(len(b) for b, _ in resp.bodies) <= 64 * 1024 + 512 * 1024
        assert app.pool.stats()["idle"] == 1
        resp = await call(app, "GET", "/echo")  # the reused connection reads again
        assert resp.status == 200


async def test_request_body_backpressure() -> None:
    """An upstream that does not read the body: the gateway stops reading the client."""
    release = asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        await release.wait()
        writer.transport.abort()

    srv = await asyncio.start_server(handle, "127.0.0.1", 0, limit=1024)
    port = srv.sockets[0].getsockname()[1]
    rec = record(HOST, [f"http://127.0.0.1:{port}"], policy={"read_timeout_ms": 60_000})
    consumed: list[int] = []
    parts = [b"x" * 65536] * 400  # 25 MiB, more than any socket buffer
    try:
        async with gateway(rec) as app:
            task = asyncio.create_task(
                call(
                    app,
                    "POST",
                    "/upload",
                    body=parts,
                    consumed=consumed,
                    headers=[(b"content-length", str(65536 * 400).encode())],
                )
            )
            await asyncio.sleep(0.5)
            assert 0 < len(consumed) < 400  # reading stopped well before the end
            release.set()
            resp = await task
            assert resp.status == 502
    finally:
        release.set()
        srv.close()
        await srv.wait_closed()


async def test_client_disconnect_aborts_upstream(up: UpstreamServer) -> None:
    async with gateway(record(HOST, [url(up)])) as app:
        resp = await call(app, "GET", "/stream/100/20", on_body=lambda _b: True)
        assert resp.status == 200 and not resp.complete
        stats = app.pool.stats()
        assert stats["active"] == 0 and stats["idle"] == 0  # aborted, not pooled
        resp = await call(app, "GET", "/echo")
        assert resp.status == 200


async def test_lifespan_protocol(up: UpstreamServer) -> None:
    store = MemoryRouteStore()
    await store.publish(record(HOST, [url(up)]))
    app = GatewayApp(config=gw_config(), store=store)
    inbox: asyncio.Queue[Message] = asyncio.Queue()
    outbox: list[Message] = []
    answered = asyncio.Event()

    async def send(message: Message) -> None:
        outbox.append(message)
        answered.set()

    task = asyncio.create_task(app({"type": "lifespan"}, inbox.get, send))
    await inbox.put({"type": "lifespan.startup"})
    await asyncio.wait_for(answered.wait(), 10)
    assert outbox == [{"type": "lifespan.startup.complete"}]
    assert app.started
    assert (await call(app, "GET", "/echo")).status == 200
    await inbox.put({"type": "lifespan.shutdown"})
    await asyncio.wait_for(task, 10)
    assert outbox[-1] == {"type": "lifespan.shutdown.complete"}
    assert not app.started


# ----------------------------------------------------------------------------- websocket


async def ws_session(
    app: GatewayApp,
    path: str,
    client_messages: list[Message],
    *,
    expect: int,
    extensions: bool = True,
    subprotocols: list[str] | None = None,
    host: str = HOST,
) -> list[Message]:
    """Run a websocket scope: connect, the given messages after accept, then wait for
    ``expect`` messages from the app (beyond the accept) before disconnecting."""
    scope: dict[str, Any] = {
        "type": "websocket",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "scheme": "ws",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", host.encode()),
            (b"connection", b"Upgrade"),
            (b"upgrade", b"websocket"),
            (b"sec-websocket-key", b"dGhlIHNhbXBsZSBub25jZQ=="),
            (b"sec-websocket-version", b"13"),
            (b"sec-websocket-extensions", b"permessage-deflate"),
        ],
        "client": ("10.0.0.2", 40000),
        "server": ("127.0.0.1", 8080),
        "subprotocols": subprotocols or [],
    }
    if extensions:
        scope["extensions"] = {"websocket.http.response": {}}
    sent: list[Message] = []
    accepted = asyncio.Event()
    enough = asyncio.Event()
    queue: list[Message] = [{"type": "websocket.connect"}]

    async def receive() -> Message:
        if queue:
            return queue.pop(0)
        await accepted.wait()
        if client_messages:
            return client_messages.pop(0)
        await enough.wait()
        return {"type": "websocket.disconnect", "code": 1000}

    async def send(message: Message) -> None:
        sent.append(message)
        if message["type"] == "websocket.accept":
            accepted.set()
        elif len(sent) > expect:
            enough.set()
        if message["type"] in ("websocket.close", "websocket.http.response.body"):
            enough.set()

    await asyncio.wait_for(app(scope, receive, send), 10)
    return sent


async def test_websocket_proxied(up: UpstreamServer) -> None:
    async with gateway(record(HOST, [url(up)])) as app:
        sent = await ws_session(
            app,
            "/ws",
            [
                {"type": "websocket.receive", "text": "hello ✓"},
                {"type": "websocket.receive", "bytes": b"\x00\x01\x02"},
                {"type": "websocket.receive", "bytes": os.urandom(200_000)},
            ],
            expect=3,
        )
        assert sent[0]["type"] == "websocket.accept"
        assert sent[0]["subprotocol"] is None
        assert sent[0]["headers"][-1][0] == b"x-request-id"
        assert sent[1] == {"type": "websocket.send", "text": "hello ✓"}
        assert sent[2] == {"type": "websocket.send", "bytes": b"\x00\x01\x02"}
        assert len(sent[3]["bytes"]) == 200_000
        assert not app.tunnels
        assert app.counters.by_class[1] == 1  # the 101


async def ws_handshake(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> dict[str, str]:
    """Upstream side of a handshake: read the upgrade request, answer 101."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)}
    key = headers["sec-websocket-key"].encode()
    accept = base64.b64encode(hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
    extra = b"Sec-WebSocket-Protocol: chat.v2\r\nSet-Cookie: a=b\r\n" if "chat" in lines[0] else b""
    writer.write(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        + extra
        + b"Sec-WebSocket-Accept: "
        + accept
        + b"\r\n\r\n"
    )
    return headers


@contextlib.asynccontextmanager
async def ws_upstream(handler: Any) -> AsyncIterator[str]:
    srv = await asyncio.start_server(handler, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{srv.sockets[0].getsockname()[1]}"
    finally:
        srv.close()
        await srv.wait_closed()


async def test_websocket_upstream_drops_the_connection() -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await ws_handshake(reader, writer)
        writer.write(wsframes.encode_frame(wsframes.OP_TEXT, b"last words"))
        await writer.drain()
        writer.close()  # no close frame

    async with ws_upstream(handle) as upstream, gateway(record(HOST, [upstream])) as app:
        sent = await ws_session(app, "/ws", [], expect=5)
    assert sent[0]["type"] == "websocket.accept"
    assert sent[1] == {"type": "websocket.send", "text": "last words"}
    assert sent[2]["type"] == "websocket.close" and sent[2]["code"] == 1011


async def test_websocket_upstream_protocol_error() -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await ws_handshake(reader, writer)
        writer.write(wsframes.encode_frame(wsframes.OP_TEXT, b"x", mask=b"abcd"))  # masked!
        await writer.drain()
        with contextlib.suppress(Exception):
            await reader.read()
        writer.close()

    async with ws_upstream(handle) as upstream, gateway(record(HOST, [upstream])) as app:
        sent = await ws_session(app, "/ws", [], expect=5)
    assert sent[0]["type"] == "websocket.accept"
    assert sent[1]["type"] == "websocket.close" and sent[1]["code"] == 1011


@pytest.mark.parametrize(
    ("head", "code"),
    [
        (b"HTTP/1.1 101 Switching Protocols\r\nX-Big: " + b"b" * 5000, 502),  # unfinished
        (b"HTTP/1.1 101 Switching Protocols\r\n" + b"X-H: v\r\n" * 21 + b"\r\n", 502),
        (b"HTTP/1.1 101 Switching Protocols\r\nX-Stalled: yes\r\n", 504),
    ],
    ids=["too-large", "too-many-headers", "stalled"],
)
async def test_websocket_handshake_head_is_bounded(head: bytes, code: int) -> None:
    """The WebSocket handshake's answer is a response head like any other: the pool's size,
    count and deadline limits apply (the tunnel's idle timeout alone is extended by bytes)."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(head)
        with contextlib.suppress(ConnectionError):
            await reader.read()  # until the gateway gives up on the handshake
        writer.close()

    overrides = {
        "max_response_header_bytes": 4096,
        "max_response_headers": 20,
        "response_header_timeout": 0.3,
        "sweep_interval": 0.02,
    }
    async with (
        ws_upstream(handle) as upstream,
        gateway(record(HOST, [upstream]), **overrides) as app,
    ):
        started = time.monotonic()
        sent = await ws_session(app, "/ws", [], expect=5)
        assert time.monotonic() - started < 3
    assert sent[0]["type"] == "websocket.http.response.start", sent
    assert sent[0]["status"] == code, sent
    expected = "upstream_header_too_large" if code == 502 else "gateway_timeout"
    assert json.loads(sent[1]["body"])["error"]["code"] == expected


async def test_websocket_idle_timeout(up: UpstreamServer) -> None:
    rec = record(HOST, [url(up)], policy={"read_timeout_ms": 200})
    async with gateway(rec) as app:
        started = time.monotonic()
        sent = await ws_session(app, "/ws", [], expect=5)
        assert time.monotonic() - started < 3
        assert sent[0]["type"] == "websocket.accept"
        assert sent[-1]["type"] == "websocket.close" and sent[-1]["code"] == 1001
        assert not app.tunnels


async def test_websocket_refused_by_upstream(up: UpstreamServer) -> None:
    async with gateway(record(HOST, [url(up)])) as app:
        # the upstream answers /status/403 with 403 instead of 101
        sent = await ws_session(app, "/status/403", [], expect=5)
        assert sent[0]["type"] == "websocket.http.response.start"
        assert sent[0]["status"] == 403
        assert sent[1]["body"] == b"status 403\n"
        # without the extension: a close with 1011
        sent = await ws_session(app, "/status/403", [], expect=5, extensions=False)
        assert sent == [{"type": "websocket.close", "code": 1011}]


async def test_websocket_gateway_answers() -> None:
    async with gateway(record(HOST, [refused_url()])) as app:
        sent = await ws_session(app, "/ws", [], expect=5)
        assert sent[0]["type"] == "websocket.http.response.start" and sent[0]["status"] == 502
        sent = await ws_session(app, "/ws", [], expect=5, host="nobody.example.com")
        assert sent[0]["status"] == 404
        assert json.loads(sent[1]["body"])["error"]["code"] == "not_found"


async def test_websocket_subprotocol_and_pings() -> None:
    """A hand-written upstream: checks the handshake, picks a subprotocol, pings."""
    seen: dict[str, Any] = {}

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.update(await ws_handshake(reader, writer))
        writer.write(wsframes.encode_frame(wsframes.OP_PING, b"are you there"))
        reader_ = wsframes.MessageReader(masked=True)
        frames: list[wsframes.Frame] = []
        while not any(f.opcode == wsframes.OP_PONG for f in frames):
            frames += reader_.feed(await reader.read(65536))
        seen["pong"] = [f.payload for f in frames if f.opcode == wsframes.OP_PONG]
        writer.write(wsframes.encode_frame(wsframes.OP_TEXT, b"part one ", fin=False))
        writer.write(wsframes.encode_frame(wsframes.OP_CONTINUATION, b"and two"))
        writer.write(wsframes.encode_frame(wsframes.OP_CLOSE, wsframes.close_payload(4000, "done")))
        await writer.drain()
        while True:
            frames = reader_.feed(await reader.read(65536))
            if any(f.opcode == wsframes.OP_CLOSE for f in frames):
                seen["close"] = wsframes.parse_close(
                    next(f for f in frames if f.opcode == wsframes.OP_CLOSE).payload
                )
                break
        writer.close()

    async with ws_upstream(handle) as upstream, gateway(record(HOST, [upstream])) as app:
        sent = await ws_session(app, "/chat", [], expect=5, subprotocols=["chat.v1", "chat.v2"])
    assert seen["sec-websocket-protocol"] == "chat.v1, chat.v2"
    assert seen["sec-websocket-key"] != "dGhlIHNhbXBsZSBub25jZQ=="  # the gateway's own key
    assert "sec-websocket-extensions" not in seen
    assert seen["x-turnout-deployment"] == "dep-1"
    assert seen["pong"] == [b"are you there"]
    assert seen["close"] == (4000, "")
    assert sent[0]["type"] == "websocket.accept"
    assert sent[0]["subprotocol"] == "chat.v2"
    assert (b"set-cookie", b"a=b") in sent[0]["headers"]
    assert sent[1] == {"type": "websocket.send", "text": "part one and two"}
    assert sent[2] == {"type": "websocket.close", "code": 4000, "reason": "done"}


def test_under_uvloop() -> None:
    """The unit tests above run on the stdlib loop; the gateway runs on uvloop."""
    import uvloop

    async def scenario() -> None:
        async with upstream_server() as up, gateway(record(HOST, [url(up)])) as app:
            resp = await call(app, "POST", "/echo", body=[b"ab", b"cd"], version="2")
            assert resp.status == 200 and resp.json()["body_length"] == 4
            resp = await call(app, "GET", "/stream/3/10")
            assert resp.body == b"data: 0\n\ndata: 1\n\ndata: 2\n\n"
            sent = await ws_session(
                app, "/ws", [{"type": "websocket.receive", "bytes": b"hi"}], expect=1
            )
            assert sent[1] == {"type": "websocket.send", "bytes": b"hi"}

    uvloop.run(scenario())


# ----------------------------------------------------------------------------- configuration


def test_config_from_env_and_back() -> None:
    env = {
        "TURNOUT_REDIS_URL": "redis://127.0.0.1:7000/2",
        "TURNOUT_REDIS_PREFIX": "tx",
        "TURNOUT_SNAPSHOT": "/tmp/routes.snap",
        "TURNOUT_INTERNAL": "127.0.0.2:9999",
        "TURNOUT_TRUSTED_PROXIES": "10.0.0.0/8, 192.168.1.1",
        "TURNOUT_ACCESS_LOG": "1",
    }
    config = config_from_env(env)
    assert config.redis_url == "redis://127.0.0.1:7000/2"
    assert config.redis_prefix == "tx"
    assert config.snapshot_path == "/tmp/routes.snap"
    assert (config.internal_host, config.internal_port) == ("127.0.0.2", 9999)
    assert config.trusted_proxies == parse_networks(["10.0.0.0/8", "192.168.1.1/32"])
    assert config.access_log is True
    defaults = config_from_env({})
    assert defaults.redis_url is None and defaults.internal_port == 9901
    assert config_from_env({"TURNOUT_INTERNAL": "off"}).internal_port == 0
    with pytest.raises(ValueError, match="TURNOUT_ACCESS_LOG"):
        config_from_env({"TURNOUT_ACCESS_LOG": "maybe"})
    with pytest.raises(ValueError, match="TURNOUT_INTERNAL"):
        config_from_env({"TURNOUT_INTERNAL": "host:port"})
    with pytest.raises(ValueError, match="TURNOUT_MAX_RESPONSE_HEADERS"):
        config_from_env({"TURNOUT_MAX_RESPONSE_HEADERS": "many"})
    with pytest.raises(ValueError, match="TURNOUT_MAX_RESPONSE_HEADER_BYTES: must be at least 1"):
        config_from_env({"TURNOUT_MAX_RESPONSE_HEADER_BYTES": "0"})
    # export_config writes exactly what config_from_env reads back
    full = GatewayConfig(
        listen_host="127.0.0.1",
        listen_port=8181,
        workers=3,
        server="granian",
        redis_url="redis://h:1/0",
        snapshot_path="/x",
        internal_port=0,
        trusted_proxies=parse_networks(["10.1.0.0/16"]),
        access_log=True,
        access_log_sample=0.25,
        ejection=EjectionPolicy(5, 2.5),
        drain_timeout=7.0,
        pool_max_per_origin=9,
        flush_interval=0.5,
        keepalive_timeout=12.0,
        max_response_header_bytes=4096,
        max_response_headers=12,
        response_header_timeout=1.5,
    )
    out: dict[str, str] = {"TURNOUT_REDIS_URL": "stale"}
    export_config(full, out)
    assert config_from_env(out) == full
    export_config(GatewayConfig(), out)
    assert "TURNOUT_REDIS_URL" not in out


def test_worker_slots(tmp_path: Path) -> None:
    first = _claim_slot(str(tmp_path), 2)
    second = _claim_slot(str(tmp_path), 2)
    assert first is not None and second is not None
    assert (first[0], second[0]) == (0, 1)
    assert _claim_slot(str(tmp_path), 2) is None  # all taken
    os.close(first[1])  # a worker died: its number is free again
    again = _claim_slot(str(tmp_path), 2)
    assert again is not None and again[0] == 0
    os.close(again[1])
    os.close(second[1])


# ----------------------------------------------------------------------------- real servers


class ServerProcess:
    def __init__(self, cmd: list[str], env: dict[str, str], port: int, log: Path) -> None:
        self.port = port
        self.log = log
        self._log = log.open("wb")
        self.proc = subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=self._log, stderr=self._log
        )

    def wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited:\n{self.output()}")
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2),
            ):
                return
            time.sleep(0.05)
        raise AssertionError(f"server not listening:\n{self.output()}")

    def output(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log.read_text(errors="replace")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


def server_command(kind: str, port: int) -> list[str]:
    if kind == "uvicorn":
        return [
            sys.executable,
            "-m",
            "uvicorn",
            "gateway.asgi:app",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--loop",
            "uvloop",
            "--http",
            "httptools",
            "--ws",
            "wsproto",
            "--no-proxy-headers",
            "--no-server-header",
            "--no-date-header",
            "--log-level",
            "warning",
        ]
    return [
        str(Path(sys.executable).parent / "granian"),
        "--interface",
        "asgi",
        "--loop",
        "uvloop",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "warning",
        "gateway.asgi:app",
    ]


@pytest.fixture(params=["uvicorn", "granian"])
def server_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def run_server(tmp_path: Path) -> Iterator[Any]:
    started: list[ServerProcess] = []

    def start(kind: str, env_extra: dict[str, str]) -> ServerProcess:
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("TURNOUT_")}
        env.update(env_extra)
        proc = ServerProcess(server_command(kind, port), env, port, tmp_path / f"{kind}.log")
        started.append(proc)
        proc.wait_ready()
        return proc

    yield start
    for proc in started:
        proc.stop()


async def ws_client_roundtrip(
    port: int, host: str, path: str, messages: list[bytes]
) -> list[bytes]:
    """A minimal WebSocket client (our own codec, masked frames) through the real server."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    key = base64.b64encode(os.urandom(16))
    writer.write(
        f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key.decode()}\r\n\r\n".encode()
    )
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert head.startswith(b"HTTP/1.1 101"), head
    ws = wsframes.MessageReader(masked=False)
    got: list[bytes] = []
    for m in messages:
        writer.write(wsframes.client_frame(wsframes.OP_BINARY, m))
    while len(got) < len(messages):
        frames = ws.feed(await asyncio.wait_for(reader.read(65536), 10))
        got += [f.payload for f in frames if f.opcode == wsframes.OP_BINARY]
    writer.write(wsframes.client_frame(wsframes.OP_CLOSE, wsframes.close_payload(1000)))
    with contextlib.suppress(Exception):
        while True:
            data = await asyncio.wait_for(reader.read(65536), 5)
            if not data or any(f.opcode == wsframes.OP_CLOSE for f in ws.feed(data)):
                break
    writer.close()
    with contextlib.suppress(Exception):
        await writer.wait_closed()
    return got


@pytest.mark.e2e
async def test_real_asgi_server(
    redis_url: str, up: UpstreamServer, server_kind: str, run_server: Any
) -> None:
    store = RedisRouteStore(redis_url)
    try:
        await store.publish(record(HOST, [url(up)]))
        server: ServerProcess = await asyncio.to_thread(
            run_server,
            server_kind,
            {
                "TURNOUT_REDIS_URL": redis_url,
                "TURNOUT_INTERNAL": "off",
                "TURNOUT_FLUSH_INTERVAL": "0.2",
            },
        )
        base = f"http://127.0.0.1:{server.port}"
        async with httpx.AsyncClient(base_url=base, timeout=10) as client:
            resp = await client.get("/echo?q=1", headers={"Host": HOST, "X-Turnout-Space": "evil"})
            assert resp.status_code == 200, server.output()
            echo = resp.json()
            seen = {k.lower(): v for k, v in echo["headers"]}
            assert echo["target"] == "/echo?q=1"
            assert seen["x-turnout-space"] == "space-1"
            assert seen["x-forwarded-for"] == "127.0.0.1"
            assert resp.headers["x-request-id"] == seen["x-request-id"]
            # a record published while the server runs reaches it through the stream
            await store.publish(record("late.example.com", [url(up)]))
            deadline = time.monotonic() + 5
            while True:
                resp = await client.get("/echo", headers={"Host": "late.example.com"})
                if resp.status_code == 200 or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.05)
            assert resp.status_code == 200
            resp = await client.get("/", headers={"Host": "nobody.example.com"})
            assert resp.status_code == 404
            assert resp.headers["content-type"] == "application/json"
            assert resp.json()["error"]["code"] == "not_found"
            # streamed through
            async with client.stream("GET", "/stream/4/30", headers={"Host": HOST}) as stream:
                pieces = [piece async for piece in stream.aiter_raw()]
            assert b"".join(pieces) == b"".join(f"data: {i}\n\n".encode() for i in range(4))
            payload = os.urandom(200_000)
            resp = await client.post("/upload", content=payload, headers={"Host": HOST})
            assert resp.json()["sha256"] == hashlib.sha256(payload).hexdigest()
        try:
            got = await ws_client_roundtrip(server.port, HOST, "/ws", [b"one", b"two" * 1000])
        except TimeoutError:
            raise AssertionError(server.output()) from None
        assert got == [b"one", b"two" * 1000]
        # uvicorn re-raises the signal after its graceful shutdown; granian exits 0
        code = await asyncio.to_thread(server.stop)
        assert code in (0, -signal.SIGTERM), server.output()
        # the shutdown flushed the counters to Redis
        r = aioredis.Redis.from_url(redis_url)
        try:
            keys = [k async for k in r.scan_iter(match=f"{Keys().tag}:health:dep-1:*")]
            assert keys, server.output()
            rows = [await r.hgetall(k) for k in keys]
            # /echo, the late host, /stream, /upload (2xx) and the websocket (101)
            assert sum(int(row[b"total"]) for row in rows) == 5, rows
            assert sum(int(row.get(b"2xx", 0)) for row in rows) == 4, rows
        finally:
            await r.aclose()
    finally:
        await store.close()


def _consecutive_free_ports(attempts: int = 50) -> int:
    """A port P with P and P + 1 both free a moment ago (worker N listens on P + N)."""
    for _ in range(attempts):
        with socket.socket() as a, socket.socket() as b:
            a.bind(("127.0.0.1", 0))
            first = int(a.getsockname()[1])
            try:
                b.bind(("127.0.0.1", first + 1))
            except OSError:
                continue  # taken (or TIME_WAIT): try another pair
            return first
    raise AssertionError(f"no two consecutive free loopback ports in {attempts} attempts")


@pytest.mark.e2e
def test_run_asgi_server_workers_have_their_own_internal_port(
    server_kind: str, tmp_path: Path
) -> None:
    """``turnout gateway --server uvicorn|granian --workers 2``: each worker claims a slot, so
    worker N serves the internal listener on port + N."""
    port = free_port()
    internal = _consecutive_free_ports()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TURNOUT_")}
    cmd = [
        sys.executable,
        "-m",
        "turnout.cli",
        "gateway",
        "--server",
        server_kind,
        "--workers",
        "2",
        "--listen",
        f"127.0.0.1:{port}",
        "--internal",
        f"127.0.0.1:{internal}",
        "--log-level",
        "WARNING",
    ]
    proc = ServerProcess(cmd, env, port, tmp_path / "gateway.log")
    try:
        proc.wait_ready()
        deadline = time.monotonic() + 20
        answers: dict[int, Any] = {}
        while len(answers) < 2 and time.monotonic() < deadline:
            for p in (internal, internal + 1):
                with contextlib.suppress(httpx.HTTPError):
                    answers[p] = httpx.get(f"http://127.0.0.1:{p}/healthz", timeout=1).json()
            time.sleep(0.05)
        assert answers == {internal: {"status": "ok"}, internal + 1: {"status": "ok"}}, (
            proc.output()
        )
        resp = httpx.get(f"http://127.0.0.1:{port}/", headers={"Host": "x.example.com"})
        assert resp.status_code == 404 and resp.json()["error"]["code"] == "not_found"
    finally:
        code = proc.stop()
    assert code == 0, proc.output()
